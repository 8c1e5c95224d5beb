//! The teaching fault switches over HTTP, under `/admin` (so behind `ADMIN_TOKEN`):
//!
//! - `GET    /admin/faults`: every switch, whether it is active, what remains (a count or
//!   seconds) and the failure scenario it demonstrates (`scripts/scenarios/<scenario>.sh`);
//! - `POST   /admin/faults/{switch}` with `{"count": N}`, `{"seconds": S}` or `{}` (per the
//!   switch's unit): turns it on, answering its state;
//! - `DELETE /admin/faults/{switch}`: turns it off.
//!
//! # Why only with `DEMO_FAULTS=1`
//! A switch breaks delivery on purpose (never a guarantee: see
//! [`message_table::faults`]). A production service must not carry that lever at all, so
//! without the setting these routes are not mounted: they answer 404 like any unknown
//! route, and the relay and inbox hold a disabled [`Faults`] that costs an `Option` check.

use axum::{Router, extract::State, routing::get};
use serde::{Deserialize, Serialize};

use common::http::{ApiError, Json, Path};
use message_table::faults::{Faults, Switch, SwitchState, Unit};

/// Largest `count` a switch takes.
const MAX_COUNT: u64 = 1_000;
/// Longest a timed switch stays on.
const MAX_SECONDS: u64 = 3_600;

/// The routes, to be merged into the `/admin` nest; none when `faults` is off.
pub fn router(faults: Faults) -> Router {
    if !faults.is_on() {
        return Router::new();
    }
    Router::new()
        .route("/faults", get(list))
        .route(
            "/faults/{switch}",
            axum::routing::post(turn_on).delete(turn_off),
        )
        .with_state(faults)
}

/// One switch, as `GET /admin/faults` lists it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FaultSwitch {
    /// `pause_relay`, `fail_handler`, `lose_confirms`, `drop_broker_connection`,
    /// `stop_consumer`, `deliver_twice` or `hold_ack`.
    pub switch: String,
    /// How it is turned on: `count` (`{"count": N}`), `seconds` (`{"seconds": S}`) or
    /// `once` (`{}`).
    pub unit: String,
    pub active: bool,
    /// Occasions left, for `count` switches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_count: Option<u64>,
    /// Seconds left (rounded up), for `seconds` switches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remaining_seconds: Option<u64>,
    /// The failure scenario it shows: `scripts/scenarios/<scenario>.sh`.
    pub scenario: String,
}

impl From<SwitchState> for FaultSwitch {
    fn from(s: SwitchState) -> Self {
        FaultSwitch {
            switch: s.switch.name().into(),
            unit: s.switch.unit().name().into(),
            active: s.active,
            remaining_count: s.remaining_count,
            remaining_seconds: s.remaining_seconds,
            scenario: s.switch.scenario().into(),
        }
    }
}

/// `GET /admin/faults`'s body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FaultSwitches {
    pub switches: Vec<FaultSwitch>,
}

/// `POST /admin/faults/{switch}`'s body: `count` or `seconds` as the switch's unit says,
/// neither for `drop_broker_connection`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TurnOn {
    /// 1 to 1000: the next N occasions.
    pub count: Option<u64>,
    /// 1 to 3600.
    pub seconds: Option<u64>,
}

impl TurnOn {
    /// The amount for `switch`, or why the body does not fit it.
    fn amount(&self, switch: Switch) -> Result<u64, ApiError> {
        let name = switch.name();
        let wrong = || {
            ApiError::validation(match switch.unit() {
                Unit::Count => format!("{name} takes {{\"count\": 1..={MAX_COUNT}}}"),
                Unit::Seconds => format!("{name} takes {{\"seconds\": 1..={MAX_SECONDS}}}"),
                Unit::Once => format!("{name} takes an empty object {{}}"),
            })
        };
        match (switch.unit(), self.count, self.seconds) {
            (Unit::Count, Some(n @ 1..=MAX_COUNT), None) => Ok(n),
            (Unit::Seconds, None, Some(s @ 1..=MAX_SECONDS)) => Ok(s),
            (Unit::Once, None, None) => Ok(1),
            _ => Err(wrong()),
        }
    }
}

fn switch_named(name: &str) -> Result<Switch, ApiError> {
    Switch::parse(name).ok_or_else(|| {
        let known: Vec<_> = Switch::ALL.iter().map(|s| s.name()).collect();
        ApiError::NotFound(format!(
            "no teaching switch named {name:?}; there are {}",
            known.join(", ")
        ))
    })
}

fn state_of(faults: &Faults, switch: Switch) -> FaultSwitch {
    let state = faults
        .states()
        .into_iter()
        .find(|s| s.switch == switch)
        .expect("every switch has a state while faults are on");
    state.into()
}

/// Every teaching switch and what it is doing (only with `DEMO_FAULTS=1`).
#[utoipa::path(get, path = "/admin/faults", tag = "faults",
    responses(
        (status = 200, description = "every switch", body = FaultSwitches),
        (status = 401, description = "no or wrong admin token", body = common::openapi::ErrorBody),
        (status = 404, description = "DEMO_FAULTS is off, or ADMIN_TOKEN unset", body = common::openapi::ErrorBody)))]
pub async fn list(State(faults): State<Faults>) -> Json<FaultSwitches> {
    Json(FaultSwitches {
        switches: faults.states().into_iter().map(Into::into).collect(),
    })
}

/// Turns a switch on: `{"count": N}` (`fail_handler`, `lose_confirms`, `deliver_twice`,
/// `hold_ack`),
/// `{"seconds": S}` (`pause_relay`, `stop_consumer`) or `{}` (`drop_broker_connection`,
/// once). Setting it again replaces what remained.
#[utoipa::path(post, path = "/admin/faults/{switch}", tag = "faults",
    params(("switch" = String, Path, description = "the switch's name")),
    request_body = TurnOn,
    responses(
        (status = 200, description = "on; its state", body = FaultSwitch),
        (status = 400, description = "malformed JSON", body = common::openapi::ErrorBody),
        (status = 401, description = "no or wrong admin token", body = common::openapi::ErrorBody),
        (status = 404, description = "no such switch, or DEMO_FAULTS off", body = common::openapi::ErrorBody),
        (status = 415, description = "not application/json", body = common::openapi::ErrorBody),
        (status = 422, description = "count or seconds missing, out of range or not the switch's unit", body = common::openapi::ErrorBody)))]
pub async fn turn_on(
    State(faults): State<Faults>,
    Path(name): Path<String>,
    Json(body): Json<TurnOn>,
) -> Result<Json<FaultSwitch>, ApiError> {
    let switch = switch_named(&name)?;
    faults.set(switch, body.amount(switch)?);
    Ok(Json(state_of(&faults, switch)))
}

/// Turns a switch off (whatever remained).
#[utoipa::path(delete, path = "/admin/faults/{switch}", tag = "faults",
    params(("switch" = String, Path, description = "the switch's name")),
    responses(
        (status = 200, description = "off; its state", body = FaultSwitch),
        (status = 401, description = "no or wrong admin token", body = common::openapi::ErrorBody),
        (status = 404, description = "no such switch, or DEMO_FAULTS off", body = common::openapi::ErrorBody)))]
pub async fn turn_off(
    State(faults): State<Faults>,
    Path(name): Path<String>,
) -> Result<Json<FaultSwitch>, ApiError> {
    let switch = switch_named(&name)?;
    faults.clear(switch);
    Ok(Json(state_of(&faults, switch)))
}

/// The fault routes' OpenAPI paths, as mounted (under `/admin`), to merge into a
/// service's document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(list, turn_on, turn_off),
    components(schemas(FaultSwitch, FaultSwitches, TurnOn))
)]
pub struct FaultsDoc;

#[cfg(test)]
mod tests {
    use utoipa::OpenApi;

    use super::*;

    #[test]
    fn a_body_must_fit_the_switch() {
        let body = |count, seconds| TurnOn { count, seconds };
        assert_eq!(body(Some(2), None).amount(Switch::FailHandler).unwrap(), 2);
        assert_eq!(body(None, Some(5)).amount(Switch::PauseRelay).unwrap(), 5);
        assert!(
            body(None, None)
                .amount(Switch::DropBrokerConnection)
                .is_ok()
        );
        for (b, switch) in [
            (body(None, Some(5)), Switch::FailHandler),
            (body(Some(0), None), Switch::LoseConfirms),
            (body(Some(MAX_COUNT + 1), None), Switch::DeliverTwice),
            (body(Some(1), Some(1)), Switch::DeliverTwice),
            (body(Some(3), None), Switch::StopConsumer),
            (body(None, Some(0)), Switch::PauseRelay),
            (body(None, None), Switch::PauseRelay),
            (body(Some(1), None), Switch::DropBrokerConnection),
        ] {
            let err = b.amount(switch).unwrap_err();
            assert_eq!(err.status(), axum::http::StatusCode::UNPROCESSABLE_ENTITY);
        }
    }

    #[test]
    fn the_document_lists_the_paths_as_mounted() {
        let doc = FaultsDoc::openapi();
        let paths: Vec<_> = doc.paths.paths.keys().cloned().collect();
        assert_eq!(paths, ["/admin/faults", "/admin/faults/{switch}"]);
    }
}
