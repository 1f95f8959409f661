//! Slow and stalled clients on the real producer: one that never sends its body, one that
//! trickles it, one that stalls or trickles its headers (slowloris), and one that only
//! connects are each cut off within their timeout, and the producer keeps serving.

use std::time::Duration;

use e2e::{Status, TestEnv, post_ids};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// The producer's timeouts in these tests, short to keep them fast.
const BODY_TIMEOUT: Duration = Duration::from_millis(1000);
const HEADER_TIMEOUT: Duration = Duration::from_millis(1000);

/// How much later than its timeout a client may be cut off: scheduling on a loaded
/// machine, not a second timeout.
const MARGIN: Duration = Duration::from_secs(4);

/// What a cut-off client saw.
#[derive(Debug)]
struct CutOff {
    /// The status line, if the server answered before closing.
    status_line: Option<String>,
    after: Duration,
}

/// Reads from `stream` until the server closes it (or resets it), at most `within`.
async fn read_until_closed(stream: &mut TcpStream, started: Instant, within: Duration) -> CutOff {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let closed = timeout(within, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection was still open {within:?} later; received {:?}",
        String::from_utf8_lossy(&received)
    );
    let text = String::from_utf8_lossy(&received);
    CutOff {
        status_line: text
            .lines()
            .next()
            .filter(|l| !l.is_empty())
            .map(str::to_owned),
        after: started.elapsed(),
    }
}

async fn start() -> anyhow::Result<(TestEnv, String, String)> {
    let mut env = TestEnv::start(Status::default()).await?;
    let url = env
        .start_producer(&[
            &format!("--request-body-timeout-ms={}", BODY_TIMEOUT.as_millis()),
            &format!("--header-read-timeout-ms={}", HEADER_TIMEOUT.as_millis()),
        ])
        .await?;
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/callback")
        .to_owned();
    Ok((env, url, addr))
}

/// The request line and headers of a callback whose body is `length` bytes long.
fn head(length: usize) -> String {
    format!(
        "POST /callback HTTP/1.1\r\nHost: producer\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

/// After a cut-off, the producer still accepts a callback and publishes it.
async fn still_serves(env: &TestEnv, url: &str) -> anyhow::Result<()> {
    let checks = env.topology().checks_queue;
    let before = env.ready(&checks).await?;
    post_ids(url, &[42]).await?;
    assert_eq!(env.ready(&checks).await?, before + 1);
    Ok(())
}

#[tokio::test]
async fn client_that_never_sends_its_body_is_answered_and_disconnected() -> anyhow::Result<()> {
    let (env, url, addr) = start().await?;
    let mut stream = TcpStream::connect(&addr).await?;
    let started = Instant::now();
    stream.write_all(head(22).as_bytes()).await?;

    let cut = read_until_closed(&mut stream, started, BODY_TIMEOUT + MARGIN).await;
    assert!(cut.after >= BODY_TIMEOUT, "cut off early: {cut:?}");
    let status = cut.status_line.unwrap_or_default();
    assert!(status.starts_with("HTTP/1.1 408"), "{status:?}");
    assert_eq!(env.ready(&env.topology().checks_queue).await?, 0);
    still_serves(&env, &url).await?;
    env.teardown().await
}

#[tokio::test]
async fn body_trickled_byte_by_byte_is_cut_off_at_the_body_deadline() -> anyhow::Result<()> {
    let (env, url, addr) = start().await?;
    let body = br#"{"object_ids":[1,2,3,4,5,6,7,8,9]}"#;
    let stream = TcpStream::connect(&addr).await?;
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    writer.write_all(head(body.len()).as_bytes()).await?;
    // A byte every 200 ms: never idle as long as the body timeout, so only a deadline on
    // the whole body (7 s at this pace) stops it.
    let trickle = tokio::spawn(async move {
        for byte in body {
            if writer.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let mut received = Vec::new();
    let closed = timeout(BODY_TIMEOUT + MARGIN, reader.read_to_end(&mut received)).await;
    let after = started.elapsed();
    trickle.abort();
    let answer = String::from_utf8_lossy(&received);
    assert!(closed.is_ok(), "still open after {after:?}: {answer:?}");
    assert!(after >= BODY_TIMEOUT, "cut off early, after {after:?}");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains(r#""error":"body_timeout""#), "{answer:?}");
    assert_eq!(env.ready(&env.topology().checks_queue).await?, 0);
    still_serves(&env, &url).await?;
    env.teardown().await
}

#[tokio::test]
async fn client_that_stalls_or_trickles_its_headers_is_disconnected() -> anyhow::Result<()> {
    let (env, url, addr) = start().await?;
    let head = head(2);

    // Part of the headers, then nothing.
    let mut stalled = TcpStream::connect(&addr).await?;
    let started = Instant::now();
    stalled.write_all(&head.as_bytes()[..40]).await?;
    let cut = read_until_closed(&mut stalled, started, HEADER_TIMEOUT + MARGIN).await;
    assert!(cut.after >= HEADER_TIMEOUT, "cut off early: {cut:?}");

    // Headers a byte every 100 ms: never idle, so only a deadline on the headers stops it.
    let stream = TcpStream::connect(&addr).await?;
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let bytes = head.into_bytes();
    let trickle = tokio::spawn(async move {
        for byte in bytes {
            if writer.write_all(&[byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut received = Vec::new();
    let closed = timeout(HEADER_TIMEOUT + MARGIN, reader.read_to_end(&mut received)).await;
    trickle.abort();
    assert!(
        closed.is_ok(),
        "still open after {:?}: {:?}",
        started.elapsed(),
        String::from_utf8_lossy(&received)
    );

    assert_eq!(env.ready(&env.topology().checks_queue).await?, 0);
    still_serves(&env, &url).await?;
    env.teardown().await
}

#[tokio::test]
async fn many_idle_connections_are_all_closed_and_the_producer_keeps_serving() -> anyhow::Result<()>
{
    let (env, url, addr) = start().await?;
    let started = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(TcpStream::connect(&addr).await?);
    }
    // A callback is served while they hang on.
    still_serves(&env, &url).await?;
    for stream in &mut idle {
        let cut = read_until_closed(stream, started, HEADER_TIMEOUT + MARGIN).await;
        assert!(cut.after >= HEADER_TIMEOUT, "cut off early: {cut:?}");
    }
    still_serves(&env, &url).await?;
    env.teardown().await
}

/// Starts a producer with `extra` settings and timeouts long enough to hold connections.
async fn start_with(extra: &[&str]) -> anyhow::Result<(TestEnv, String, String)> {
    let mut env = TestEnv::start(Status::default()).await?;
    let mut args = vec![
        format!("--request-body-timeout-ms={}", 10_000),
        // Held connections must outlive the test's steps.
        "--header-read-timeout-ms=10000".to_owned(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let url = env.start_producer(&args).await?;
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches("/callback")
        .to_owned();
    Ok((env, url, addr))
}

/// Reads the status line of the answer on `stream`, if one comes within `within`.
async fn status_within(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut received = Vec::new();
    let mut buffer = [0u8; 1024];
    let _ = timeout(within, async {
        while !received.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&received);
    text.lines()
        .next()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
}

#[tokio::test]
async fn large_bodies_beyond_the_budget_get_503_at_once_and_small_callbacks_are_still_taken()
-> anyhow::Result<()> {
    // Room for 4 MiB of bodies, a quarter of it kept for small ones: three 1 MiB bodies.
    let (env, url, addr) = start_with(&[
        "--max-body-bytes=1048576",
        "--max-body-bytes-in-flight=4194304",
    ])
    .await?;
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(&addr).await?;
        stream.write_all(head(1_048_576).as_bytes()).await?;
        stream.write_all(b"{\"object_ids\":[").await?;
        slow.push(stream);
    }
    let mut refused = 0;
    for stream in &mut slow {
        if let Some(status) = status_within(stream, Duration::from_millis(500)).await {
            assert!(status.starts_with("HTTP/1.1 503"), "{status}");
            refused += 1;
        }
    }
    assert_eq!(refused, 7, "ten 1 MiB bodies trickling, room for three");
    // The three still being read leave room for an ordinary callback.
    still_serves(&env, &url).await?;
    drop(slow);
    env.teardown().await
}

#[tokio::test]
async fn a_connection_beyond_max_connections_gets_503_and_is_closed() -> anyhow::Result<()> {
    let (env, url, addr) = start_with(&["--max-connections=5"]).await?;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(&addr).await?);
    }
    // Let the producer accept the five before the sixth comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, error) =
        e2e::post_callback(&url, Some("application/json"), "{\"object_ids\":[1]}").await?;
    assert_eq!(
        (status, error["error"].as_str()),
        (503, Some("overloaded")),
        "{error}"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_serves(&env, &url).await?;
    env.teardown().await
}
