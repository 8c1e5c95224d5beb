//! The order binary's settings: what it tells (`--help`) and what it refuses before touching
//! anything (configs built in code: `startup.rs`).

use std::process::Output;

/// Runs the real binary with `args` and only `env` in its environment; it must exit.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_order"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the order binary runs")
}

/// Starts the binary with `variable=value`, which must stop it with exit `status`; its
/// stderr. Were it not refused, start-up would still fail at once (no database), not serve.
fn refused_at_start_up(variable: &str, value: &str, status: i32) -> String {
    let env = [
        ("ORDER_DATABASE_URL", "postgres://postgres@127.0.0.1:1/none"),
        ("ORDER_ADDR", "127.0.0.1:0"),
        (variable, value),
    ];
    let out = run(&[], &env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(status), "{stderr}");
    stderr
}

#[test]
fn help_lists_every_variable_with_its_default() {
    let out = run(&["--help"], &[]);
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let variables = order::variables();
    assert!(variables.len() > 25, "{variables:?}");
    for (name, default) in variables {
        let listed = common::config::help_entry(&name, &default);
        assert!(help.contains(&listed), "{listed} is not in:\n{help}");
    }
}

#[test]
fn an_unparsable_variable_stops_start_up_naming_it() {
    let err = refused_at_start_up("OUTBOX_BATCH_SIZE", "lots", 2);
    assert!(
        err.contains("OUTBOX_BATCH_SIZE") && err.contains("lots"),
        "{err}"
    );
}

#[test]
fn a_lease_too_short_from_the_environment_stops_start_up_naming_the_variables() {
    let err = refused_at_start_up("OUTBOX_LEASE_MS", "12000", 1);
    assert!(
        err.contains("invalid configuration")
            && err.contains("OUTBOX_LEASE_MS")
            && err.contains("OUTBOX_CONFIRM_TIMEOUT_MS"),
        "{err}"
    );
}
