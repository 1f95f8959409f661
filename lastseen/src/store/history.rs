//! The day partitions of `object_expiries` (by `expired_at`, UTC): made a week in
//! advance, dropped whole once past the retention, so history costs a `DROP TABLE` a day
//! instead of row deletes. Rows outside every day (the sweepers were down for longer than
//! the week made in advance) wait in the default partition and are deleted row by row.

use chrono::{DateTime, Days, NaiveDate, Utc};
use sqlx::PgPool;

/// Name prefix of the day partitions; the day follows as `YYYYMMDD`.
const PARTITION_PREFIX: &str = "object_expiries_p";

/// The name of the partition that holds `day`.
pub fn partition_name(day: NaiveDate) -> String {
    format!("{PARTITION_PREFIX}{}", day.format("%Y%m%d"))
}

/// The day a partition named by [`partition_name`] holds; `None` for any other table.
fn partition_day(name: &str) -> Option<NaiveDate> {
    let digits = name.strip_prefix(PARTITION_PREFIX)?;
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// Makes the partitions of `first` and the `days - 1` days after it that are missing;
/// returns how many it made. Another sweeper making the same one at once is no error.
pub async fn ensure_partitions(pool: &PgPool, first: NaiveDate, days: u64) -> sqlx::Result<u64> {
    let existing = partitions(pool).await?;
    let mut made = 0;
    let mut first_error = None;
    for offset in 0..days {
        let Some(day) = first.checked_add_days(Days::new(offset)) else {
            break;
        };
        if existing.iter().any(|(_, d)| *d == day) {
            continue;
        }
        let Some(next) = day.succ_opt() else { break };
        // The name and bounds are made of dates only: nothing from outside.
        let statement = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF object_expiries FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
            partition_name(day)
        );
        match ddl(pool, statement).await {
            Ok(()) => made += 1,
            // Made by another sweeper between our look and our statement.
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("42P07" | "23505")) => {}
            Err(err) => {
                // The next days are still worth making; the caller hears the first error.
                first_error.get_or_insert(err);
            }
        }
    }
    match first_error {
        // 23514: the default partition holds rows of that day (the sweepers were down for
        // longer than the days made ahead); they must be moved out first, by hand.
        Some(err) => Err(err),
        None => Ok(made),
    }
}

/// Runs one DDL statement with a short lock timeout: it needs an exclusive lock on
/// `object_expiries`, and must not queue the pipeline's writes behind a long analyst
/// query; it is tried again at the next round.
async fn ddl(pool: &PgPool, statement: String) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The day partitions of `object_expiries`, by name, with the day each holds.
pub async fn partitions(pool: &PgPool) -> sqlx::Result<Vec<(String, NaiveDate)>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i
         JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'object_expiries'::regclass",
    )
    .fetch_all(pool)
    .await?;
    Ok(names
        .into_iter()
        .filter_map(|name| partition_day(&name).map(|day| (name, day)))
        .collect())
}

/// Drops every day partition that ends at or before `cutoff`, and deletes the default
/// partition's rows and the objects' latest expiries from before it; returns the
/// partitions dropped and the default partition's rows deleted. A partition another
/// sweeper dropped meanwhile is not counted.
pub async fn drop_before(pool: &PgPool, cutoff: DateTime<Utc>) -> sqlx::Result<(u64, u64)> {
    let mut dropped = 0;
    for (name, day) in partitions(pool).await? {
        let Some(end) = day.succ_opt() else { continue };
        if end.and_hms_opt(0, 0, 0).map(|t| t.and_utc()) > Some(cutoff) {
            continue;
        }
        match ddl(pool, format!("DROP TABLE {name}")).await {
            Ok(()) => dropped += 1,
            // Dropped by another sweeper meanwhile.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {}
            Err(err) => return Err(err),
        }
    }
    let deleted = sqlx::query("DELETE FROM object_expiries_default WHERE expired_at < $1")
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected();
    // The latest expiry of an object is history too: gone with its day.
    sqlx::query("DELETE FROM object_last_expiry WHERE expired_at < $1")
        .bind(cutoff)
        .execute(pool)
        .await?;
    Ok((dropped, deleted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_and_other_tables_are_not_partitions() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert_eq!(partition_name(day), "object_expiries_p20261201");
        assert_eq!(partition_day(&partition_name(day)), Some(day));
        assert_eq!(partition_day("object_expiries_default"), None);
        assert_eq!(partition_day("object_expiries_p2026"), None);
    }
}
