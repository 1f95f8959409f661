//! The live status page, `GET /status`: server-rendered HTML with its figures in place, a
//! little JavaScript that refreshes them (and the latest events) from `GET /status/figures`
//! every 2 s and shows an object's history from the read API. No asset from anywhere
//! else: it works with no internet.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};

use super::AppState;
use super::reads::ReadError;
use crate::dashboard::Figures;

const TEMPLATE: &str = include_str!("status_page.html");

/// `GET /`: to the status page.
pub async fn root() -> Redirect {
    Redirect::to("/status")
}

/// `GET /status`: the page, its figures filled in.
pub async fn page(State(state): State<Arc<AppState>>) -> Result<Response, ReadError> {
    let figures = state.dashboard()?.figures().await;
    let page = render(&figures);
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response())
}

/// `GET /status/figures`: the page's figures as JSON.
pub async fn figures(State(state): State<Arc<AppState>>) -> Result<Json<Figures>, ReadError> {
    Ok(Json(state.dashboard()?.figures().await))
}

/// The page with `figures` in place (escaped for HTML; the JSON copy for the script
/// cannot close its `<script>`).
fn render(figures: &Figures) -> String {
    let number = |n: Option<i64>| n.map_or_else(|| "–".to_owned(), group_thousands);
    let hour = |pick: fn(&crate::dashboard::Minute) -> i64| {
        Some(figures.minutes.iter().map(pick).sum::<i64>())
    };
    let hold = match &figures.expiry_hold {
        Some(hold) => format!(
            "held {} s",
            hold["lag_secs"].as_f64().unwrap_or(0.0).round()
        ),
        None => "running".to_owned(),
    };
    let json = serde_json::to_string(figures)
        .unwrap_or_else(|_| "{}".to_owned())
        // Inside <script>: no <, > or & the HTML parser could take for markup.
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026");
    TEMPLATE
        .replace(
            "{{at}}",
            &figures
                .at
                .map_or_else(|| "–".to_owned(), |at| at.format("%H:%M:%S").to_string()),
        )
        .replace("{{online}}", &number(figures.online))
        .replace("{{stale}}", &number(figures.stale))
        .replace("{{online_hour}}", &number(hour(|m| m.online)))
        .replace("{{expired_hour}}", &number(hour(|m| m.expired)))
        .replace("{{hold}}", &hold)
        .replace("{{backlog}}", &number(figures.backlog.map(i64::from)))
        .replace("{{spool}}", &number(i64::try_from(figures.spool_ids).ok()))
        .replace("{{unpublished}}", &number(figures.unpublished))
        .replace("{{figures_json}}", &json)
}

/// 12345678 as "12,345,678", as the page's script writes numbers.
fn group_thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

impl AppState {
    fn dashboard(&self) -> Result<&Arc<crate::dashboard::Dashboard>, ReadError> {
        self.reads
            .as_ref()
            .map(|reads| &reads.dashboard)
            .ok_or(ReadError::Off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_as_the_script_groups_them() {
        assert_eq!(group_thousands(0), "0");
        assert_eq!(group_thousands(999), "999");
        assert_eq!(group_thousands(1000), "1,000");
        assert_eq!(group_thousands(12_345_678), "12,345,678");
        assert_eq!(group_thousands(-4321), "-4,321");
    }

    #[test]
    fn every_placeholder_is_filled_and_the_json_cannot_close_the_script() {
        let figures = Figures {
            error: Some("</script><b>".into()),
            ..Figures::default()
        };
        let page = render(&figures);
        assert!(!page.contains("{{"), "a placeholder is left");
        assert!(!page.contains("</script><b>"));
        for outside in ["src=\"http", "href=\"http", "url(http", "@import"] {
            assert!(!page.contains(outside), "an outside asset: {outside}");
        }
    }
}
