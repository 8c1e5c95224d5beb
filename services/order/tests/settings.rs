//! The order service's settings: what the binary tells (`--help`), what it refuses before
//! touching anything, and the same rules for a configuration built in code.

use std::{process::Output, time::Duration};

use order::{Application, OrderConfig};
use test_kit::TestDb;

/// Runs the real binary with `args` and only `env` in its environment; it must exit.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_order"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the order binary runs")
}

/// Starts the binary with `variable=value`; were it not refused, start-up would still fail
/// at once (no database there), not serve.
fn start_with(variable: &str, value: &str) -> Output {
    let env = [
        ("ORDER_DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
        ("ORDER_ADDR", "127.0.0.1:0"),
        (variable, value),
    ];
    run(&[], &env)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let help = String::from_utf8(out.stdout).unwrap();
    let variables = order::variables();
    assert!(variables.len() > 25, "{variables:?}");
    for (name, default) in variables {
        let listed = format!("[env: {name}=] [default: {default}]");
        assert!(help.contains(&listed), "{listed} is not in:\n{help}");
    }
}

#[test]
fn an_unparsable_variable_stops_start_up_naming_it() {
    let out = start_with("OUTBOX_BATCH_SIZE", "lots");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("OUTBOX_BATCH_SIZE") && err.contains("lots"),
        "{err}"
    );
}

#[test]
fn a_lease_too_short_from_the_environment_stops_start_up_naming_the_variables() {
    let out = start_with("OUTBOX_LEASE_MS", "12000");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("invalid configuration")
            && err.contains("OUTBOX_LEASE_MS")
            && err.contains("OUTBOX_CONFIRM_TIMEOUT_MS"),
        "{err}"
    );
}

#[tokio::test]
async fn a_config_built_in_code_with_a_lease_too_short_is_refused() {
    let db = TestDb::new(&order::MIGRATOR).await;
    let amqp = test_kit::test_amqp();
    let mut messaging =
        test_kit::messaging(&amqp, "test.order", order::config::PAYMENT_RESULT_KEYS);
    messaging.outbox.lease = messaging.outbox.confirm_timeout + Duration::from_secs(1);
    let cfg = OrderConfig {
        addr: "127.0.0.1:0".into(),
        database_url: db.url.clone(),
        db_max_connections: 5,
        messaging,
    };
    let err = match Application::build(cfg).await {
        Ok(_) => panic!("a lease that can expire while its window is in flight started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("OUTBOX_LEASE_MS") && err.contains("OUTBOX_CONFIRM_TIMEOUT_MS"),
        "{err}"
    );
}
