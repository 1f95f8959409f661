//! Where the tests find the machine's PostgreSQL and RabbitMQ: `DATABASE_URL` and
//! `AMQP_URL` from the environment, else from the repository's `.env`. These are the
//! settings the binaries read, with the password `make` sets up, so the tests log in
//! whether `pg_hba.conf` trusts 127.0.0.1 or asks for a password. Each test makes its own
//! database (and queue names) on those servers.

use std::fmt;

/// The repository's `.env`, the one source of the development settings.
const DOT_ENV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.env");

/// The PostgreSQL server; [`ServerUrl::with_database`] names a database on it.
pub fn postgres_server() -> ServerUrl {
    ServerUrl::parse(&setting("DATABASE_URL"))
}

/// The RabbitMQ URL (with its virtual host).
pub fn amqp_url() -> String {
    amqp_server().to_string()
}

/// The RabbitMQ URL, for a test that reaches the broker another way (a proxy).
pub fn amqp_server() -> ServerUrl {
    ServerUrl::parse(&setting("AMQP_URL"))
}

/// RabbitMQ's management API: `MANAGEMENT_URL` if set, else port 15672 of the broker's
/// host.
pub fn management_url() -> String {
    std::env::var("MANAGEMENT_URL").unwrap_or_else(|_| {
        let host = amqp_server().host().to_owned();
        let name = host
            .rsplit_once(':')
            .map_or(host.as_str(), |(name, _)| name);
        format!("http://{name}:15672")
    })
}

/// `name` from the environment, else from `.env`.
fn setting(name: &str) -> String {
    if let Ok(value) = std::env::var(name) {
        return value;
    }
    dotenvy::from_path_iter(DOT_ENV)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .find_map(|(key, value)| (key == name).then_some(value))
        .unwrap_or_else(|| panic!("{name} is neither in the environment nor in {DOT_ENV}"))
}

/// A server URL taken apart, so a test can point it at another database, host or login
/// while keeping the rest (password, virtual host, query parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl {
    scheme: String,
    userinfo: Option<String>,
    host: String,
    /// Everything from the `/` after the host to before `?` (database or virtual host).
    path: String,
    /// `?…` or empty.
    query: String,
}

impl ServerUrl {
    /// Splits `scheme://[userinfo@]host[/path][?query]`.
    pub fn parse(url: &str) -> Self {
        let (scheme, rest) = url
            .split_once("://")
            .unwrap_or_else(|| panic!("not a URL: {}", lastseen::config::redact_url(url)));
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(authority_end);
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo.to_owned()), host),
            None => (None, authority),
        };
        let (path, query) = match path_and_query.find('?') {
            Some(at) => path_and_query.split_at(at),
            None => (path_and_query, ""),
        };
        Self {
            scheme: scheme.to_owned(),
            userinfo,
            host: host.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
        }
    }

    /// The same server, database `name`.
    pub fn with_database(&self, name: &str) -> String {
        Self {
            path: format!("/{name}"),
            ..self.clone()
        }
        .to_string()
    }

    /// The same URL through `host` (`addr:port`).
    pub fn with_host(&self, host: impl fmt::Display) -> Self {
        Self {
            host: host.to_string(),
            ..self.clone()
        }
    }

    /// The same URL with another login.
    pub fn with_login(&self, user: &str, password: &str) -> Self {
        Self {
            userinfo: Some(format!("{user}:{password}")),
            ..self.clone()
        }
    }

    /// `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if let Some(userinfo) = &self.userinfo {
            write!(f, "{userinfo}@")?;
        }
        write!(f, "{}{}{}", self.host, self.path, self.query)
    }
}

#[cfg(test)]
mod tests {
    use super::ServerUrl;

    #[test]
    fn a_url_keeps_its_login_and_query_when_pointed_elsewhere() {
        let pg = ServerUrl::parse("postgres://postgres:pw@127.0.0.1:5432/lastseen?sslmode=disable");
        assert_eq!(
            pg.with_database("t1"),
            "postgres://postgres:pw@127.0.0.1:5432/t1?sslmode=disable"
        );
        assert_eq!(
            pg.with_host("127.0.0.1:7000").with_database("t1"),
            "postgres://postgres:pw@127.0.0.1:7000/t1?sslmode=disable"
        );
        assert_eq!(
            pg.with_login("analyst", "analyst").with_database("t1"),
            "postgres://analyst:analyst@127.0.0.1:5432/t1?sslmode=disable"
        );
        let amqp = ServerUrl::parse("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(
            amqp.with_host("127.0.0.1:1").to_string(),
            "amqp://guest:guest@127.0.0.1:1/%2f"
        );
        assert_eq!(
            ServerUrl::parse("postgres://127.0.0.1").with_database("x"),
            "postgres://127.0.0.1/x"
        );
    }
}
