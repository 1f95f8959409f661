//! The live status page in a real browser: Debian's chromium, driven through
//! chromedriver (WebDriver). The page loads with nothing from outside, its numbers are the
//! database's, the latest events are listed and a new one shows without a reload, and the search shows an object's
//! history. Needs `chromium` and `chromium-driver`: `make browser-check` installs them and
//! runs this (CI does); `make test` leaves it out.

use std::process::Stdio;
use std::time::Duration;

use e2e::{Status, TestEnv, base_of};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use tokio::process::{Child, Command};

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    _child: Child,
    url: String,
}

async fn chromedriver() -> anyhow::Result<Driver> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot start chromedriver ({err}): make browser-check installs chromium-driver"
            )
        })?;
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if lastseen::tls::get(format!("{url}/status")).await.is_ok() {
            return Ok(Driver { _child: child, url });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("chromedriver did not answer on {url} within 10 s")
}

/// A headless chromium session.
async fn browser(driver: &str) -> anyhow::Result<Client> {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1000"]}),
    );
    Ok(
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(driver)
            .await?,
    )
}

/// Waits (at most 15 s) until `css` finds an element whose text is `wanted`.
async fn until_text(page: &Client, css: &str, wanted: &str) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..150 {
        if let Ok(element) = page.find(Locator::Css(css)).await {
            last = element.text().await.unwrap_or_default();
            if last == wanted {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("{css} showed {last:?}, not {wanted:?}, within 15 s")
}

/// What the page writes for a count (en-US grouping: 1,204).
fn shown(n: i64) -> String {
    let digits = n.to_string();
    let mut groups = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}

#[tokio::test]
#[ignore = "needs chromium and chromedriver: make browser-check"]
async fn the_status_page_shows_the_database_live_and_an_objects_history() -> anyhow::Result<()> {
    let mut env = TestEnv::start(Status::default()).await?;
    // 1,204 objects online (12 of them stale), 3 with an expired stretch before; events of the last
    // hour: 1,204 online and 40 expired, spread over minutes; none published yet.
    sqlx::raw_sql(
        "INSERT INTO objects (id, first_seen, last_seen, expires_at)
         SELECT id, now() - interval '20 minutes', now() - (id % 50) * interval '1 second',
                now() + interval '1 hour'
         FROM generate_series(1, 1204) AS id;
         UPDATE objects SET stale_at = last_seen + interval '1 second', stale_since = now()
         WHERE id % 100 = 7;
         INSERT INTO object_expiries (object_id, first_seen, last_seen, expires_at, expired_at)
         SELECT 3, now() - (k * 10 + 9) * interval '1 minute', now() - (k * 10 + 5) * interval '1 minute',
                now() - (k * 10 + 4) * interval '1 minute', now() - (k * 10 + 4) * interval '1 minute'
         FROM generate_series(1, 3) AS k;
         INSERT INTO notifications (routing_key, object_id, payload, created_at)
         SELECT 'object.online', id, jsonb_build_object('object_id', id), now() - (id % 45) * interval '1 minute'
         FROM generate_series(1, 1204) AS id;
         INSERT INTO notifications (routing_key, object_id, payload, created_at)
         SELECT 'object.expired', 5000 + k, jsonb_build_object('object_id', 5000 + k), now() - (k % 30) * interval '1 minute'
         FROM generate_series(1, 40) AS k;",
    )
    .execute(&env.pool)
    .await?;
    let base = base_of(
        &env.start_producer(&[&format!("--read-database-url={}", env.analyst_url().await?)])
            .await?,
    )
    .to_owned();
    let driver = chromedriver().await?;
    let page = browser(&driver.url).await?;
    let outcome = async {
        page.goto(&format!("{base}/status")).await?;

        // The numbers are the database's.
        let count = |sql: &'static str| {
            let pool = env.pool.clone();
            async move { anyhow::Ok(sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await?) }
        };
        until_text(&page, "#online", &shown(count("SELECT count(*) FROM objects").await?)).await?;
        let stale = count("SELECT count(*) FROM objects WHERE stale_since IS NOT NULL").await?;
        assert_eq!(stale, 12, "the seed marks 12 objects stale");
        until_text(&page, "#stale", &shown(stale)).await?;
        until_text(
            &page,
            "#online-hour",
            &shown(count("SELECT count(*) FROM notifications WHERE routing_key = 'object.online' AND created_at >= date_trunc('minute', now()) - interval '59 minutes'").await?),
        )
        .await?;
        until_text(
            &page,
            "#expired-hour",
            &shown(count("SELECT count(*) FROM notifications WHERE routing_key = 'object.expired' AND created_at >= date_trunc('minute', now()) - interval '59 minutes'").await?),
        )
        .await?;
        until_text(
            &page,
            "#unpublished",
            &shown(count("SELECT count(*) FROM notifications WHERE published_at IS NULL").await?),
        )
        .await?;
        until_text(&page, "#hold", "running").await?;
        let bars = page.find_all(Locator::Css("#chart rect")).await?;
        assert_eq!(bars.len(), 120, "two bars a minute for an hour");

        // Nothing came from anywhere but the producer.
        let resources = page
            .execute(
                "return performance.getEntriesByType('resource').map(r => r.name)",
                vec![],
            )
            .await?;
        for name in resources.as_array().into_iter().flatten() {
            let name = name.as_str().unwrap_or_default();
            assert!(name.starts_with(&base), "fetched from outside: {name}");
        }

        // The latest 25 events at once, the newest first.
        let mut shown_events = 0;
        for _ in 0..100 {
            shown_events = page.find_all(Locator::Css("#events li")).await?.len();
            if shown_events == 25 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(shown_events, 25, "the latest 25 events");
        let newest: i64 = sqlx::query_scalar("SELECT max(id) FROM notifications")
            .fetch_one(&env.pool)
            .await?;
        let first = page.find(Locator::Css("#events li")).await?;
        assert_eq!(first.attr("data-id").await?, Some(newest.to_string()));

        // A new event shows without a reload.
        sqlx::query(
            "INSERT INTO notifications (routing_key, object_id, payload)
             VALUES ('object.online', 424242, '{\"object_id\": 424242}')",
        )
        .execute(&env.pool)
        .await?;
        page.wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css("#events li[data-object-id='424242']"))
            .await?;

        // The search shows the object's history as the database has it.
        page.find(Locator::Css("#object-id")).await?.send_keys("3").await?;
        page.find(Locator::Css("#search button")).await?.click().await?;
        let stretches: Vec<(Option<chrono::DateTime<chrono::Utc>>,)> = sqlx::query_as(
            "SELECT expired_at FROM object_history WHERE object_id = 3
             ORDER BY expired_at DESC NULLS FIRST",
        )
        .fetch_all(&env.pool)
        .await?;
        let mut rows = Vec::new();
        for _ in 0..100 {
            rows = page.find_all(Locator::Css("#timeline .stretch")).await?;
            if rows.len() == stretches.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(rows.len(), stretches.len(), "one timeline row per stretch");
        for (row, (expired_at,)) in rows.iter().zip(&stretches) {
            let shown = row.attr("data-expired-at").await?.unwrap_or_default();
            match expired_at {
                None => assert_eq!(shown, "", "the current stretch first"),
                Some(at) => {
                    let shown: chrono::DateTime<chrono::Utc> = shown.parse()?;
                    assert_eq!(shown, *at);
                }
            }
        }
        let summary = page.find(Locator::Css("#object-summary")).await?;
        assert_eq!(summary.attr("data-online").await?.as_deref(), Some("true"));
        anyhow::Ok(())
    }
    .await;
    // What the browser showed at the end, for a look (and for a failure's report).
    let shot = std::env::temp_dir().join("lastseen-status-page.png");
    let _ = std::fs::write(&shot, page.screenshot().await.unwrap_or_default());
    if let Err(err) = &outcome {
        eprintln!(
            "status page test failed ({err}); the page: {}",
            shot.display()
        );
    }
    page.close().await?;
    outcome?;
    env.teardown().await
}
