//! `pay --help`, from the real binary: every variable pay reads, with its default.

#[test]
fn help_lists_every_variable_with_its_default() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pay"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("the pay binary runs");
    assert!(out.status.success(), "{out:?}");
    let help = String::from_utf8(out.stdout).unwrap();
    let variables = pay::variables();
    assert!(
        variables.iter().any(|(name, _)| name == "PAY_QUEUE"),
        "{variables:?}"
    );
    for (name, default) in variables {
        let listed = common::config::help_entry(&name, &default);
        assert!(help.contains(&listed), "{listed} is not in:\n{help}");
    }
}
