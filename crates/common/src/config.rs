//! Configuration. Each service's settings are one clap struct ([`Settings`]): every
//! setting is an environment variable (and a `--flag`) with a default that works on a
//! developer machine with PostgreSQL and RabbitMQ on localhost; `<service> --help` lists
//! them, docs/configuration.md documents them. A value that does not parse stops start-up with an error
//! naming the variable.
//!
//! `env_string` is for what is not a service setting (the tests' servers).

use std::ffi::OsString;

/// A service's settings: clap parses them from the command line and the environment.
/// A variable that is set but blank counts as unset (the default applies), except for
/// those in [`Settings::KEEP_EMPTY`].
pub trait Settings: clap::Parser {
    /// Variables for which set-but-empty means an empty value, not the default.
    const KEEP_EMPTY: &'static [&'static str] = &[];

    /// From the process's arguments and environment. `--help`, `--version` and an invalid
    /// value print their text and exit (status 0, 0 and 2).
    fn load() -> Self {
        Self::try_load_from(std::env::args_os()).unwrap_or_else(|e| e.exit())
    }

    /// From `args` (the first is the program name) and the process's environment.
    fn try_load_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        // clap reads a variable when the argument is built: drop the blank ones there.
        let mut cmd = Self::command().mut_args(|arg| {
            let blank = arg
                .get_env()
                .and_then(std::env::var_os)
                .is_some_and(|v| v.to_str().is_some_and(|v| v.trim().is_empty()));
            let keep = arg
                .get_env()
                .is_some_and(|name| Self::KEEP_EMPTY.iter().any(|k| name == *k));
            if blank && !keep {
                arg.env(None::<&'static str>)
            } else {
                arg
            }
        });
        let mut matches = cmd.try_get_matches_from_mut(args)?;
        Self::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut cmd))
    }

    /// Every variable with its default, as `--help` lists them. Every argument is read
    /// from a variable and has a default (a service starts with no configuration at all).
    fn variables() -> Vec<(String, String)> {
        Self::command()
            .get_arguments()
            .map(|arg| {
                let name = arg
                    .get_env()
                    .unwrap_or_else(|| panic!("--{} has no environment variable", arg.get_id()));
                let defaults = arg.get_default_values();
                assert!(!defaults.is_empty(), "{name:?} has no default");
                let default: Vec<_> = defaults.iter().map(|d| d.to_string_lossy()).collect();
                (name.to_string_lossy().into_owned(), default.join(","))
            })
            .collect()
    }
}

/// How `--help` lists a variable with its default, the environment being empty (what the
/// services' `--help` tests look for): clap quotes an empty default, and a secret's
/// variable is listed without its value (`hide_env_values`, see [`crate::admin`]).
pub fn help_entry(name: &str, default: &str) -> String {
    let default = if default.is_empty() { "\"\"" } else { default };
    let env = if name == crate::admin::ADMIN_TOKEN_VARIABLE {
        name.to_string()
    } else {
        format!("{name}=")
    };
    format!("[env: {env}] [default: {default}]")
}

/// Reads `name`, or `default` when unset or blank (test-kit's variables, which are not a
/// service's settings).
pub fn env_string(name: &str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => default.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Parser)]
    struct TestSettings {
        #[arg(long, env = "LMT_SETTINGS_BATCH_SIZE", default_value_t = 200)]
        lmt_settings_batch_size: i64,
        #[arg(long, env = "LMT_SETTINGS_NAME", default_value = "fallback")]
        lmt_settings_name: String,
        #[arg(long, env = "LMT_SETTINGS_PATHS", default_value = "/a,/b")]
        lmt_settings_paths: String,
    }

    impl Settings for TestSettings {
        const KEEP_EMPTY: &'static [&'static str] = &["LMT_SETTINGS_PATHS"];
    }

    /// One test, since the variables are the process's.
    #[test]
    fn settings_come_from_the_environment_and_a_bad_value_names_its_variable() {
        let load = || TestSettings::try_load_from(["test"]);
        let s = load().unwrap();
        assert_eq!(
            (s.lmt_settings_batch_size, s.lmt_settings_name.as_str()),
            (200, "fallback")
        );
        assert_eq!(s.lmt_settings_paths, "/a,/b");

        // SAFETY: variables no other test reads.
        unsafe { std::env::set_var("LMT_SETTINGS_BATCH_SIZE", "lots") };
        let err = load().unwrap_err().to_string();
        assert!(
            err.contains("LMT_SETTINGS_BATCH_SIZE") && err.contains("lots"),
            "{err}"
        );

        // Blank is unset, except where an empty value means something.
        unsafe {
            std::env::set_var("LMT_SETTINGS_BATCH_SIZE", " ");
            std::env::set_var("LMT_SETTINGS_NAME", "");
            std::env::set_var("LMT_SETTINGS_PATHS", "");
        }
        let s = load().unwrap();
        assert_eq!(s.lmt_settings_batch_size, 200);
        assert_eq!(s.lmt_settings_name, "fallback");
        assert_eq!(s.lmt_settings_paths, "");

        // Set, the variable wins over the default; a flag wins over the variable.
        unsafe { std::env::set_var("LMT_SETTINGS_NAME", "from-env") };
        assert_eq!(load().unwrap().lmt_settings_name, "from-env");
        let s = TestSettings::try_load_from(["test", "--lmt-settings-name", "flag"]).unwrap();
        assert_eq!(s.lmt_settings_name, "flag");

        assert_eq!(
            TestSettings::variables(),
            [
                ("LMT_SETTINGS_BATCH_SIZE".to_string(), "200".to_string()),
                ("LMT_SETTINGS_NAME".into(), "fallback".into()),
                ("LMT_SETTINGS_PATHS".into(), "/a,/b".into()),
            ]
        );
    }
}
