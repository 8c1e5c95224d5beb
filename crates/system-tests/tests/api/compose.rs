//! docker-compose.yml agrees with the services and with itself, without Docker: every variable
//! it sets on order, pay and gateway is one that service reads; every listen port, gateway
//! route, database and broker URL agrees with the services' own defaults (their settings)
//! and with the other containers (names, credentials, the PostgreSQL init script); each value
//! written twice (interpolation defaults, Dockerfile build arguments) is written the same way.
//! `scripts/compose-test.sh` runs the file for real.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use yaml_rust2::{Yaml, YamlLoader};

const SERVICES: [&str; 3] = ["order", "pay", "gateway"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(relative: &str) -> String {
    fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn compose_text() -> String {
    read("docker-compose.yml")
}

fn compose() -> Yaml {
    let docs = YamlLoader::load_from_str(&compose_text()).expect("docker-compose.yml is YAML");
    docs.into_iter()
        .next()
        .expect("docker-compose.yml has a document")
}

fn service<'a>(compose: &'a Yaml, name: &str) -> &'a Yaml {
    let s = &compose["services"][name];
    assert!(!s.is_badvalue(), "docker-compose.yml has no service {name}");
    s
}

fn service_names(compose: &Yaml) -> Vec<String> {
    compose["services"]
        .as_hash()
        .expect("services is a mapping")
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect()
}

/// A service's `environment`, as a mapping or as a list of `NAME=value`, values raw (with
/// their `${VAR:-default}` interpolations).
fn environment(service: &Yaml) -> BTreeMap<String, String> {
    match &service["environment"] {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_string(), scalar(v)))
            .collect(),
        Yaml::Array(a) => a
            .iter()
            .map(|item| {
                let item = item.as_str().unwrap();
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        Yaml::BadValue | Yaml::Null => BTreeMap::new(),
        other => panic!("unexpected environment {other:?}"),
    }
}

fn scalar(v: &Yaml) -> String {
    match v {
        Yaml::String(s) | Yaml::Real(s) => s.clone(),
        Yaml::Integer(i) => i.to_string(),
        Yaml::Boolean(b) => b.to_string(),
        Yaml::Null => String::new(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn strings(v: &Yaml) -> Vec<String> {
    match v {
        Yaml::Array(a) => a.iter().map(scalar).collect(),
        Yaml::BadValue => Vec::new(),
        other => vec![scalar(other)],
    }
}

/// `${NAME:-default}` / `${NAME-default}` / `${NAME}` replaced by the default, as compose does
/// when NAME is unset. `$$` is a literal `$`.
fn with_defaults(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(after) = after.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').expect("unterminated ${");
            let expr = &body[..end];
            let default = expr
                .split_once(":-")
                .or_else(|| expr.split_once('-'))
                .map_or("", |(_, d)| d);
            out.push_str(default);
            rest = &body[end + 1..];
        } else {
            panic!("bare $ in {value:?}: use ${{NAME:-default}}");
        }
    }
    out.push_str(rest);
    out
}

/// Every `${NAME:-default}` (or `${NAME-default}`) of the text: (NAME, default).
fn interpolations(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("${") {
        let body = &text[at + 2..];
        let Some(end) = body.find('}') else { continue };
        let expr = &body[..end];
        let name: String = expr
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let default = expr[name.len()..]
            .trim_start_matches(':')
            .trim_start_matches('-');
        found.push((name, default.to_string()));
    }
    found
}

// ---------------------------------------------------------------------------------------------
// What the code reads: each service's settings, as `--help` lists them.

/// Every variable `service` reads, with its default.
fn variables(service: &str) -> BTreeMap<String, String> {
    let list = match service {
        "order" => order::variables(),
        "pay" => pay::variables(),
        "gateway" => gateway::variables(),
        other => panic!("no service {other}"),
    };
    list.into_iter().collect()
}

fn read_by(service: &str) -> BTreeSet<String> {
    variables(service).into_keys().collect()
}

/// The default `service` gives variable `name`.
fn code_default(service: &str, name: &str) -> String {
    variables(service)
        .remove(name)
        .unwrap_or_else(|| panic!("{service} does not read {name}"))
}

fn addr_variable(service: &str) -> String {
    format!("{}_ADDR", service.to_uppercase())
}

fn port_of_addr(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{addr:?} is not HOST:PORT"))
}

#[derive(Debug, PartialEq)]
struct Url {
    scheme: String,
    user: String,
    host: String,
    port: Option<u16>,
    path: String,
}

fn parse_url(url: &str) -> Url {
    let (scheme, rest) = url.split_once("://").unwrap_or_else(|| panic!("{url:?}"));
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("", authority));
    let user = userinfo.split(':').next().unwrap_or("").to_string();
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            Some(p.parse().unwrap_or_else(|_| panic!("port in {url:?}"))),
        ),
        None => (hostport, None),
    };
    Url {
        scheme: scheme.to_string(),
        user,
        host: host.to_string(),
        port,
        path: path.to_string(),
    }
}

/// `prefix=url,prefix=url`, tolerant of several upstreams per route (separated by `,`, `|`,
/// `;` or spaces): prefix → its upstream URLs.
fn parse_routes(spec: &str) -> BTreeMap<String, Vec<String>> {
    let mut routes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let upstreams = match part.split_once('=') {
            Some((prefix, upstreams)) if prefix.starts_with('/') => {
                current = Some(prefix.trim().to_string());
                upstreams
            }
            _ => part,
        };
        let prefix = current
            .clone()
            .unwrap_or_else(|| panic!("no prefix before {part:?}"));
        let urls = routes.entry(prefix).or_default();
        for url in upstreams.split(['|', ';', ' ']).map(str::trim) {
            if url.starts_with("http://") {
                urls.push(url.to_string());
            }
        }
    }
    routes
}

// ---------------------------------------------------------------------------------------------

#[test]
fn the_services_read_every_variable_compose_sets_on_them() {
    let compose = compose();
    for name in SERVICES {
        let env = environment(service(&compose, name));
        assert!(!env.is_empty(), "{name} has no environment");
        let read = read_by(name);
        assert!(
            read.contains(&addr_variable(name)),
            "{name}'s settings have no {}",
            addr_variable(name)
        );
        let unread: Vec<_> = env.keys().filter(|k| !read.contains(*k)).collect();
        assert!(
            unread.is_empty(),
            "docker-compose.yml sets variables {name} does not read: {unread:?}"
        );
    }
}

#[test]
fn listen_addresses_and_healthchecks_use_the_services_default_ports() {
    let compose = compose();
    for name in SERVICES {
        let svc = service(&compose, name);
        let var = addr_variable(name);
        let default = code_default(name, &var);
        let value = with_defaults(&environment(svc)[&var]);
        assert_eq!(
            port_of_addr(&value),
            port_of_addr(&default),
            "{name}: {var}={value} in docker-compose.yml, default {default}"
        );
        assert!(
            value.starts_with("0.0.0.0:"),
            "{name} must listen on every address in its container: {var}={value}"
        );
        // The healthcheck reads the port from the same variable (docker/healthcheck.sh).
        let test = strings(&svc["healthcheck"]["test"]);
        assert!(
            test.iter().any(|t| t == "lmt-healthcheck") && test.contains(&var),
            "{name}'s healthcheck must be `lmt-healthcheck {var}`: {test:?}"
        );
    }
    // The script the healthchecks run is in the image.
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("COPY docker/healthcheck.sh /usr/local/bin/lmt-healthcheck"));
    assert!(read(".dockerignore").contains("!docker/healthcheck.sh"));
}

#[test]
fn the_published_gateway_port_is_the_gateways_listen_port() {
    let compose = compose();
    let gateway = service(&compose, "gateway");
    let listen = port_of_addr(&with_defaults(&environment(gateway)["GATEWAY_ADDR"]));
    let ports = strings(&gateway["ports"]);
    assert_eq!(ports.len(), 1, "{ports:?}");
    // ADDRESS:HOST_PORT:CONTAINER_PORT, with the defaults.
    let mapping = with_defaults(&ports[0]);
    let parts: Vec<&str> = mapping.split(':').collect();
    assert_eq!(parts.len(), 3, "{mapping}");
    assert_eq!(
        parts[2].parse::<u16>().unwrap(),
        listen,
        "{mapping} vs GATEWAY_ADDR"
    );
    // By default the host port is the one of README's curl session: the gateway's default.
    assert_eq!(parts[0], "127.0.0.1", "{mapping}");
    assert_eq!(
        parts[1].parse::<u16>().unwrap(),
        port_of_addr(&code_default("gateway", "GATEWAY_ADDR"))
    );
}

#[test]
fn every_published_port_is_a_variable_and_bound_to_a_variable_address() {
    let compose = compose();
    let mut published = 0;
    for name in service_names(&compose) {
        for mapping in strings(&service(&compose, &name)["ports"]) {
            published += 1;
            // ADDRESS:HOST_PORT:CONTAINER_PORT, the first two interpolated.
            let parts: Vec<&str> = mapping.splitn(2, "}:").collect();
            assert!(
                mapping.starts_with("${PUBLISH_ADDRESS:-") && parts.len() == 2,
                "{name}: {mapping:?} must start with the publish address variable"
            );
            let host_port = parts[1].rsplit_once(':').map(|(h, _)| h).unwrap_or("");
            assert!(
                host_port.starts_with("${") && host_port.ends_with('}'),
                "{name}: the host port of {mapping:?} must be a variable"
            );
        }
    }
    assert_eq!(
        published, 4,
        "the gateway (and its demo copy, on the same port), the management UI and Prometheus"
    );
}

#[test]
fn gateway_routes_point_at_the_services_on_their_ports() {
    let compose = compose();
    let services = service_names(&compose);
    let gateway = service(&compose, "gateway");
    let routes = parse_routes(&environment(gateway)["GATEWAY_ROUTES"]);
    let defaults = parse_routes(&code_default("gateway", "GATEWAY_ROUTES"));
    assert_eq!(
        routes.keys().collect::<Vec<_>>(),
        defaults.keys().collect::<Vec<_>>(),
        "the same route prefixes as the default GATEWAY_ROUTES"
    );
    let depends: BTreeSet<String> = gateway["depends_on"]
        .as_hash()
        .expect("gateway depends_on is a mapping")
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for (prefix, urls) in &routes {
        assert!(!urls.is_empty(), "{prefix} has no upstream");
        let default_port = parse_url(&defaults[prefix][0]).port;
        for url in urls {
            let url = parse_url(url);
            assert!(
                services.contains(&url.host),
                "{prefix}: upstream host {} is not a service",
                url.host
            );
            assert_eq!(
                url.port, default_port,
                "{prefix}: port differs from the default"
            );
            let upstream_addr = with_defaults(
                &environment(service(&compose, &url.host))[&addr_variable(&url.host)],
            );
            assert_eq!(
                url.port,
                Some(port_of_addr(&upstream_addr)),
                "{prefix}: {} listens on {upstream_addr}",
                url.host
            );
            assert!(
                depends.contains(&url.host),
                "gateway must depend on {}",
                url.host
            );
        }
    }
}

#[test]
fn order_reaches_pay_by_its_service_name_on_pays_port() {
    let compose = compose();
    let url = parse_url(&environment(service(&compose, "order"))["ORDER_PAY_URL"]);
    let default = parse_url(&code_default("order", "ORDER_PAY_URL"));
    let pay_addr = with_defaults(&environment(service(&compose, "pay"))[&addr_variable("pay")]);
    assert_eq!(url.host, "pay", "ORDER_PAY_URL must name the pay service");
    assert_eq!(
        url.port, default.port,
        "ORDER_PAY_URL's port differs from the default"
    );
    assert_eq!(
        url.port,
        Some(port_of_addr(&pay_addr)),
        "pay listens on {pay_addr}"
    );
}

#[test]
fn database_urls_name_the_users_and_databases_the_init_script_creates() {
    let compose = compose();
    let postgres = service(&compose, "postgres");
    let postgres_env = environment(postgres);
    let init = read("docker/postgres/init/10-order-pay.sh");
    let volumes = strings(&postgres["volumes"]);
    assert!(
        volumes
            .iter()
            .any(|v| v.starts_with("./docker/postgres/init:/docker-entrypoint-initdb.d")),
        "the init script is mounted: {volumes:?}"
    );
    for name in ["order", "pay"] {
        let var = format!("{}_DATABASE_URL", name.to_uppercase());
        let raw = &environment(service(&compose, name))[&var];
        let url = parse_url(&with_defaults(raw));
        let default = parse_url(&code_default(name, &var));
        assert_eq!(url.scheme, default.scheme, "{var}");
        assert_eq!(url.host, "postgres", "{var}");
        assert_eq!(url.port, default.port, "{var}: PostgreSQL's port");
        assert_eq!(url.path, default.path, "{var}: the database name");
        let db = url.path.trim_start_matches('/');
        let user = &url.user;
        assert!(
            init.contains(&format!("CREATE ROLE {user} LOGIN"))
                && init.contains(&format!("CREATE DATABASE {db} OWNER {user};"))
                && init.contains(&format!("REVOKE ALL ON DATABASE {db} FROM PUBLIC;")),
            "the init script must create {user}, and {db} owned by it and closed to others"
        );
        // The password: one variable, the same expression in the URL and for the init script.
        let password_var = format!("{}_DB_PASSWORD", name.to_uppercase());
        let expression = &postgres_env[&password_var];
        assert!(
            expression.starts_with(&format!("${{{password_var}")),
            "postgres' {password_var} must come from the variable: {expression}"
        );
        assert!(
            raw.contains(&format!(":{expression}@")),
            "{var} must use {expression} as password: {raw}"
        );
        assert!(init.contains(&format!("\"${{{password_var}")));
        let depends = &service(&compose, name)["depends_on"];
        for dep in ["postgres", "rabbitmq"] {
            assert_eq!(
                depends[dep]["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for {dep}"
            );
        }
    }
}

#[test]
fn amqp_urls_use_the_brokers_port_vhost_and_credentials() {
    let compose = compose();
    let rabbitmq = environment(service(&compose, "rabbitmq"));
    assert_eq!(
        service(&compose, "rabbitmq")["hostname"].as_str(),
        Some("rabbitmq"),
        "a stable node name"
    );
    let default = parse_url(&code_default("order", "AMQP_URL"));
    let mut seen = BTreeSet::new();
    for name in ["order", "pay"] {
        let raw = environment(service(&compose, name))["AMQP_URL"].clone();
        let url = parse_url(&with_defaults(&raw));
        assert_eq!(url.scheme, default.scheme);
        assert_eq!(url.host, "rabbitmq");
        assert_eq!(url.port, default.port, "AMQP's port");
        assert_eq!(url.path, default.path, "the virtual host");
        let credentials = format!(
            "{}://{}:{}@",
            url.scheme, rabbitmq["RABBITMQ_DEFAULT_USER"], rabbitmq["RABBITMQ_DEFAULT_PASS"]
        );
        assert!(
            raw.starts_with(&credentials),
            "{name}'s AMQP_URL must use RabbitMQ's user and password ({credentials}): {raw}"
        );
        seen.insert(raw);
    }
    assert_eq!(seen.len(), 1, "order and pay use the same broker URL");
}

#[test]
fn every_container_has_a_healthcheck_a_restart_policy_and_waits_for_healthy_dependencies() {
    let compose = compose();
    let names = service_names(&compose);
    for expected in ["postgres", "rabbitmq", "order", "pay", "gateway"] {
        assert!(names.contains(&expected.to_string()), "no {expected}");
    }
    for name in &names {
        let svc = service(&compose, name);
        assert_eq!(svc["restart"].as_str(), Some("unless-stopped"), "{name}");
        assert!(
            !strings(&svc["healthcheck"]["test"]).is_empty(),
            "{name} has no healthcheck"
        );
        if let Some(depends) = svc["depends_on"].as_hash() {
            for (dep, how) in depends {
                assert_eq!(
                    how["condition"].as_str(),
                    Some("service_healthy"),
                    "{name} -> {dep:?}"
                );
            }
        } else {
            assert!(
                svc["depends_on"].is_badvalue(),
                "{name}: depends_on must be a mapping"
            );
        }
    }
}

#[test]
fn a_variable_has_one_default_everywhere_and_build_arguments_match_the_dockerfile() {
    let text = compose_text();
    let mut defaults: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, default) in interpolations(&text) {
        defaults.entry(name).or_default().insert(default);
    }
    for (name, values) in &defaults {
        assert_eq!(
            values.len(),
            1,
            "${{{name}}} has several defaults: {values:?}"
        );
    }

    // Build arguments: the same defaults as the Dockerfile's global ARGs.
    let dockerfile = read("Dockerfile");
    let mut args = BTreeMap::new();
    for line in dockerfile.lines().take_while(|l| !l.starts_with("FROM ")) {
        if let Some((name, value)) = line.strip_prefix("ARG ").and_then(|a| a.split_once('=')) {
            args.insert(name.to_string(), value.to_string());
        }
    }
    assert!(args.contains_key("RUST_IMAGE") && args.contains_key("RUNTIME_IMAGE"));
    let compose = compose();
    for name in SERVICES {
        let build = &service(&compose, name)["build"];
        let target = build["target"].as_str().expect("a build target");
        assert_eq!(target, name);
        assert!(
            dockerfile.contains(&format!(" AS {target}\n"))
                && dockerfile.contains(&format!("/out/{target} /usr/local/bin/{target}"))
                && dockerfile.contains(&format!("CMD [\"{target}\"]")),
            "the Dockerfile has a stage {target} running the {target} binary"
        );
        let build_args = build["args"].as_hash().expect("build args");
        assert_eq!(
            build_args.len(),
            args.len(),
            "{name}: every base image is an argument"
        );
        for (arg, value) in build_args {
            let arg = arg.as_str().unwrap();
            let value = scalar(value);
            assert_eq!(
                value,
                format!("${{{arg}:-{}}}", args[arg]),
                "{name}: build arg {arg} and the Dockerfile's default"
            );
        }
    }
    // Infrastructure images are variables defaulting to the official images.
    for (name, var, official) in [
        ("postgres", "POSTGRES_IMAGE", "postgres:"),
        ("rabbitmq", "RABBITMQ_IMAGE", "rabbitmq:"),
    ] {
        let image = scalar(&service(&compose, name)["image"]);
        assert!(
            image.starts_with(&format!("${{{var}:-{official}")),
            "{name}: {image}"
        );
    }
}

#[test]
fn prometheus_is_optional_and_scrapes_every_service_on_its_port() {
    let compose = compose();
    let prometheus = service(&compose, "prometheus");
    assert_eq!(
        strings(&prometheus["profiles"]),
        ["observability"],
        "Prometheus starts only with --profile observability"
    );
    // `docker compose up` starts the system as before: .env makes "app" the default profile,
    // and --profile observability starts it too; the demo copies start with --profile demo only.
    assert!(read(".env").lines().any(|l| l == "COMPOSE_PROFILES=app"));
    for name in SERVICES {
        assert_eq!(
            strings(&service(&compose, name)["profiles"]),
            ["app", "observability"],
            "{name}"
        );
        assert_eq!(
            strings(&service(&compose, &format!("{name}-demo"))["profiles"]),
            ["demo"],
            "{name}-demo"
        );
    }
    for name in ["postgres", "rabbitmq"] {
        assert!(service(&compose, name)["profiles"].is_badvalue(), "{name}");
    }
    assert!(
        strings(&prometheus["volumes"])
            .contains(&"./docker/prometheus.yml:/etc/prometheus/prometheus.yml:ro".to_string()),
        "the scrape configuration is mounted"
    );

    let config = YamlLoader::load_from_str(&read("docker/prometheus.yml"))
        .expect("docker/prometheus.yml is YAML")
        .remove(0);
    let jobs = config["scrape_configs"]
        .as_vec()
        .expect("scrape_configs is a list");
    let mut scraped = BTreeSet::new();
    for job in jobs {
        assert_eq!(job["metrics_path"].as_str(), Some("/metrics"), "{job:?}");
        for static_config in job["static_configs"].as_vec().expect("static_configs") {
            for target in strings(&static_config["targets"]) {
                let (host, port) = target.split_once(':').expect("host:port");
                let addr =
                    with_defaults(&environment(service(&compose, host))[&addr_variable(host)]);
                assert_eq!(
                    port.parse::<u16>().unwrap(),
                    port_of_addr(&addr),
                    "{target}: {host} listens on {addr}"
                );
                scraped.insert(host.to_string());
            }
        }
    }
    assert_eq!(
        scraped,
        SERVICES
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
    );
}

/// Every file a service embeds (`include_str!`, `include_bytes!`) is in the Docker build
/// context, or the image's build fails where `cargo build` here does not. `.dockerignore`
/// excludes everything and lists what is in: a directory (`crates/`) or a file.
#[test]
fn every_file_the_binaries_embed_is_in_the_docker_build_context() {
    let allowed: Vec<String> = read(".dockerignore")
        .lines()
        .filter_map(|line| line.trim().strip_prefix('!'))
        .map(str::to_string)
        .collect();
    let mut sources = Vec::new();
    for top in ["services", "crates"] {
        collect_sources(&root().join(top), &mut sources);
    }
    let mut embedded = 0;
    for source in sources {
        let text = std::fs::read_to_string(&source).unwrap();
        for macro_name in ["include_str!(\"", "include_bytes!(\""] {
            for (at, _) in text.match_indices(macro_name) {
                let rest = &text[at + macro_name.len()..];
                let relative = &rest[..rest.find('"').unwrap()];
                let file = source.parent().unwrap().join(relative);
                let file = file
                    .canonicalize()
                    .unwrap_or_else(|e| panic!("{file:?}: {e}"));
                let in_repo = file.strip_prefix(root().canonicalize().unwrap()).unwrap();
                let in_repo = in_repo.to_string_lossy();
                assert!(
                    allowed
                        .iter()
                        .any(|a| in_repo == *a
                            || a.ends_with('/') && in_repo.starts_with(a.as_str())),
                    "{} embeds {in_repo}, which .dockerignore keeps out of the build context",
                    source.display()
                );
                embedded += 1;
            }
        }
    }
    assert!(embedded > 0, "found no embedded file: the scan is broken");
}

/// The `.rs` files under `dir`, tests and build output left out (they are not in the image).
fn collect_sources(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            if !matches!(
                name.as_str(),
                "tests" | "benches" | "target" | "node_modules"
            ) {
                collect_sources(&path, out);
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
}

#[test]
fn the_demo_copies_are_the_services_with_the_switches_on_and_a_development_token() {
    let compose = compose();
    for name in SERVICES {
        let plain = service(&compose, name);
        let demo = service(&compose, &format!("{name}-demo"));
        assert_eq!(scalar(&demo["build"]["target"]), name);
        assert_eq!(demo["healthcheck"], plain["healthcheck"], "{name}");
        assert_eq!(demo["ports"], plain["ports"], "{name}");
        let mut env = environment(demo);
        assert_eq!(
            env.remove("ADMIN_TOKEN").as_deref(),
            Some("${DEMO_ADMIN_TOKEN:-demo-admin-token-unsafe}"),
            "{name}"
        );
        let mut plain_env = environment(plain);
        assert_eq!(
            plain_env.remove("ADMIN_TOKEN").as_deref(),
            Some("${ADMIN_TOKEN:-}")
        );
        if name != "gateway" {
            assert_eq!(env.remove("DEMO_FAULTS").as_deref(), Some("1"), "{name}");
            assert!(env.remove("RABBITMQ_MANAGEMENT_URL").is_some(), "{name}");
            // Reached under the plain service's name.
            assert_eq!(strings(&demo["networks"]["default"]["aliases"]), [name]);
        }
        assert_eq!(
            env, plain_env,
            "{name}-demo sets what {name} sets, and the demo's own"
        );
    }
    assert!(
        compose_text().contains("UNSAFE FOR PRODUCTION"),
        "the development token is documented as unsafe"
    );
}
