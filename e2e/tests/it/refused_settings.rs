//! A setting the server refuses (a wrong password) is not an outage: the real binaries
//! stop within seconds with exit code 2 and one line naming the setting, and never print
//! the secret; they do not retry forever.

use std::time::{Duration, Instant};

use e2e::private_postgres::PrivatePostgres;
use e2e::process::binaries;
use e2e::{Status, TestEnv};

/// The password the binaries are given; it must appear in none of their output.
const WRONG_PASSWORD: &str = "wrong-secret-5b1e";

/// What a binary printed and how it ended.
struct Ended {
    code: Option<i32>,
    after: Duration,
    stderr: String,
}

/// Runs `program` with `env` (in a folder without `.env`) until it exits, at most 30 s.
async fn run_to_exit(program: &str, env: &[(&str, String)]) -> anyhow::Result<Ended> {
    let binary = binaries()?.join(program);
    let started = Instant::now();
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(binary)
            .current_dir(std::env::temp_dir())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("METRICS_ADDR", "127.0.0.1:0")
            .env("CALLBACK_ADDR", "127.0.0.1:0")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| anyhow::anyhow!("{program} was still running after 30 s"))??;
    anyhow::ensure!(
        !String::from_utf8_lossy(&output.stdout).contains(WRONG_PASSWORD),
        "{program} printed the password on stdout"
    );
    Ok(Ended {
        code: output.status.code(),
        after: started.elapsed(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Exit code 2 within 10 s, one line naming `setting`, the password nowhere.
fn assert_refused(program: &str, ended: &Ended, setting: &str) {
    assert_eq!(ended.code, Some(2), "{program}: {}", ended.stderr);
    assert!(
        ended.after < Duration::from_secs(10),
        "{program} took {:?}",
        ended.after
    );
    // The error is one line of its own (a log line of another thread may still follow it).
    let naming = ended
        .stderr
        .lines()
        .filter(|line| line.starts_with(&format!("invalid configuration: {setting}: ")))
        .count();
    assert_eq!(naming, 1, "{program}'s stderr:\n{}", ended.stderr);
    assert!(
        !ended.stderr.contains(WRONG_PASSWORD),
        "{program} printed the password: {}",
        ended.stderr
    );
}

#[tokio::test]
async fn a_wrong_postgresql_password_stops_consumer_and_sweeper_with_exit_2_naming_database_url()
-> anyhow::Result<()> {
    let postgres = PrivatePostgres::start("right-password")?;
    // The server works with the right password: what stops the binaries is the password.
    let admin = sqlx::PgPool::connect(&postgres.url("right-password", "postgres")).await?;
    admin.close().await;
    let database_url = postgres.url(WRONG_PASSWORD, "lastseen");
    for program in ["consumer", "sweeper"] {
        let ended = run_to_exit(
            program,
            &[
                ("DATABASE_URL", database_url.clone()),
                ("AMQP_URL", e2e::amqp_url()),
            ],
        )
        .await?;
        assert_refused(program, &ended, "DATABASE_URL");
        assert!(
            ended.stderr.contains("password authentication failed"),
            "{}",
            ended.stderr
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_wrong_rabbitmq_password_stops_every_binary_with_exit_2_naming_amqp_url()
-> anyhow::Result<()> {
    let env = TestEnv::start(Status::default()).await?;
    let amqp_url = e2e::amqp_server()
        .with_login("guest", WRONG_PASSWORD)
        .to_string();
    for program in ["producer", "consumer", "sweeper"] {
        let mut process_env = env.process_env();
        process_env.retain(|(name, _)| *name != "AMQP_URL");
        process_env.push(("AMQP_URL", amqp_url.clone()));
        let ended = run_to_exit(program, &process_env).await?;
        assert_refused(program, &ended, "AMQP_URL");
        assert!(ended.stderr.contains("ACCESS_REFUSED"), "{}", ended.stderr);
    }
    env.teardown().await
}
