//! Day partitions of the tables that grow with time (`object_expiries` by `expired_at`,
//! the outbox `notifications` by `created_at`; UTC days): made a week in advance by the
//! sweeper, dropped whole once a day is past its retention, so keeping a table the size
//! of its recent past costs a `DROP TABLE` a day instead of row deletes. Rows outside
//! every day (the sweepers were down for longer than the days made ahead) wait in the
//! table's default partition.

use chrono::{DateTime, Days, NaiveDate, Utc};
use sqlx::PgPool;

/// A table partitioned by day, as its migration made it.
#[derive(Debug, Clone, Copy)]
pub struct DayPartitioned {
    /// The partitioned table; its day partitions are `{table}_pYYYYMMDD`.
    pub table: &'static str,
    /// Rows that must outlive their day: a partition holding any is not dropped (`None`:
    /// every row may go with its day).
    pub kept_while: Option<&'static str>,
}

/// `object_expiries`, by day of `expired_at`.
pub const OBJECT_EXPIRIES: DayPartitioned = DayPartitioned {
    table: "object_expiries",
    kept_while: None,
};

/// The outbox, by day of `created_at`: a day with a notification still owed to RabbitMQ
/// or to the webhook is kept.
pub const NOTIFICATIONS: DayPartitioned = DayPartitioned {
    table: "notifications",
    kept_while: Some("published_at IS NULL OR webhook_outcome IS NULL"),
};

/// What one round of dropping did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Day partitions dropped.
    pub partitions: u64,
    /// Day partitions past the retention kept for rows that must outlive their day.
    pub kept: u64,
}

impl DayPartitioned {
    /// The name of the partition that holds `day`.
    pub fn partition_name(&self, day: NaiveDate) -> String {
        format!("{}_p{}", self.table, day.format("%Y%m%d"))
    }

    /// The day a partition named by [`Self::partition_name`] holds; `None` for any other
    /// table.
    fn partition_day(&self, name: &str) -> Option<NaiveDate> {
        let digits = name.strip_prefix(self.table)?.strip_prefix("_p")?;
        NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
    }

    /// Makes the partitions of `first` and the `days - 1` days after it that are
    /// missing; returns how many it made. Another sweeper making the same one at once is
    /// no error.
    pub async fn ensure(&self, pool: &PgPool, first: NaiveDate, days: u64) -> sqlx::Result<u64> {
        let existing = self.partitions(pool).await?;
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
            // The names and bounds are made of a constant and dates only: nothing from
            // outside.
            let statement = format!(
                "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
                self.partition_name(day),
                self.table
            );
            match ddl(pool, None, statement).await {
                Ok(_) => made += 1,
                // Made by another sweeper between our look and our statement.
                Err(sqlx::Error::Database(db))
                    if matches!(db.code().as_deref(), Some("42P07" | "23505")) => {}
                Err(err) => {
                    // The next days are still worth making; the caller hears the first
                    // error.
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            // 23514: the default partition holds rows of that day (the sweepers were
            // down for longer than the days made ahead); they must be moved out first,
            // by hand.
            Some(err) => Err(err),
            None => Ok(made),
        }
    }

    /// The day partitions, by name, with the day each holds.
    pub async fn partitions(&self, pool: &PgPool) -> sqlx::Result<Vec<(String, NaiveDate)>> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = $1::regclass",
        )
        .bind(self.table)
        .fetch_all(pool)
        .await?;
        Ok(names
            .into_iter()
            .filter_map(|name| self.partition_day(&name).map(|day| (name, day)))
            .collect())
    }

    /// Drops every day partition that ends at or before `cutoff`, except those holding
    /// a row that must outlive its day ([`Self::kept_while`]). A partition another
    /// sweeper dropped meanwhile is not counted.
    pub async fn drop_ended_by(
        &self,
        pool: &PgPool,
        cutoff: DateTime<Utc>,
    ) -> sqlx::Result<Dropped> {
        let mut done = Dropped::default();
        for (name, day) in self.partitions(pool).await? {
            let Some(end) = day.succ_opt() else { continue };
            if end.and_hms_opt(0, 0, 0).map(|t| t.and_utc()) > Some(cutoff) {
                continue;
            }
            // The check runs with the whole table locked as the DROP will lock it: a row
            // written into this day by a transaction not yet committed is waited for and
            // seen. After that no row enters an old day (new rows get today's date) or
            // becomes owed again once done.
            let guard = self.kept_while.map(|rows| Guard {
                lock: format!("LOCK TABLE ONLY {} IN ACCESS EXCLUSIVE MODE", self.table),
                holds: format!("SELECT EXISTS (SELECT FROM {name} WHERE {rows})"),
            });
            match ddl(pool, guard, format!("DROP TABLE {name}")).await {
                Ok(true) => done.partitions += 1,
                Ok(false) => done.kept += 1,
                // Dropped by another sweeper meanwhile.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {}
                Err(err) => return Err(err),
            }
        }
        Ok(done)
    }
}

/// What must be checked before a DDL statement may run.
struct Guard {
    /// Taken first, so that `holds` sees every row that could exist.
    lock: String,
    /// A query answering one boolean: true, and the statement does not run.
    holds: String,
}

/// Runs one DDL statement with a short lock timeout, unless `guard` says no first, in the
/// same transaction; whether it ran. A partition's DDL needs an exclusive lock on the
/// whole table, and must not queue the pipeline's writes behind a long analyst query: it
/// is tried again at the next round.
async fn ddl(pool: &PgPool, guard: Option<Guard>, statement: String) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '2s'")
        .execute(&mut *tx)
        .await?;
    if let Some(guard) = guard {
        sqlx::query(sqlx::AssertSqlSafe(guard.lock))
            .execute(&mut *tx)
            .await?;
        let holds: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(guard.holds))
            .fetch_one(&mut *tx)
            .await?;
        if holds {
            return Ok(false);
        }
    }
    sqlx::query(sqlx::AssertSqlSafe(statement))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip_and_other_tables_are_not_partitions() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        assert_eq!(
            OBJECT_EXPIRIES.partition_name(day),
            "object_expiries_p20261201"
        );
        assert_eq!(NOTIFICATIONS.partition_name(day), "notifications_p20261201");
        for table in [OBJECT_EXPIRIES, NOTIFICATIONS] {
            assert_eq!(table.partition_day(&table.partition_name(day)), Some(day));
            assert_eq!(
                table.partition_day(&format!("{}_default", table.table)),
                None
            );
        }
        assert_eq!(OBJECT_EXPIRIES.partition_day("object_expiries_p2026"), None);
        assert_eq!(
            OBJECT_EXPIRIES.partition_day(&NOTIFICATIONS.partition_name(day)),
            None
        );
    }
}
