//! Database pool and migrations. Each service owns its database; nothing here ever joins
//! across two of them.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    AssertSqlSafe, ConnectOptions, Connection, PgConnection, PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Creates the database named in `url` when it does not exist yet (connecting to the
/// `postgres` maintenance database of the same server). Used by scripts and tests so a
/// fresh machine needs no manual `createdb`.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let opts = PgConnectOptions::from_str(url).with_context(|| format!("invalid database url {url:?}"))?;
    let name = opts
        .get_database()
        .context("database url names no database")?
        .to_string();
    let mut admin = opts
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("cannot connect to the postgres maintenance database")?;
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        // CREATE DATABASE takes no bind parameters; the name is quoted as an identifier.
        let stmt = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(stmt)).execute(&mut admin).await {
            // Another process may have created it in the meantime.
            let raced = matches!(&e, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P04"));
            if !raced {
                return Err(e).context(format!("cannot create database {name}"));
            }
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// Opens the pool and applies the service's migrations (idempotent; concurrent instances
/// are serialised by sqlx's migration lock).
pub async fn connect_and_migrate(
    url: &str,
    max_connections: u32,
    migrator: &Migrator,
) -> anyhow::Result<PgPool> {
    let pool = pool_options(max_connections)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {}", redact(url)))?;
    migrator.run(&pool).await.context("migrations failed")?;
    Ok(pool)
}

pub fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        // Fail fast when the database is gone, so HTTP answers 503 instead of hanging.
        .acquire_timeout(Duration::from_secs(3))
}

/// Readiness probe: one round trip.
pub async fn ping(pool: &PgPool) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A single connection, for callers that must not take from a pool (LISTEN, admin).
pub async fn connect_one(url: &str) -> sqlx::Result<PgConnection> {
    PgConnection::connect(url).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_password_only() {
        assert_eq!(super::redact("postgres://u:pw@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
