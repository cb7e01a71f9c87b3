//! Faults on request, carried in W3C baggage: the one place that decides whether a step
//! of the order's journey fails or slows down because the request asked it to.
//!
//! A caller sends `baggage: demo.fault=stock_out` to the gateway; the member travels
//! with the trace context over gRPC, through the outbox and Kafka's record headers, into
//! the worker's spawned task, where `reserve stock` fails. Nothing here propagates
//! anything: the telemetry crate already carries baggage on every hop. This crate only
//! reads it, at the step that asks, from the current span's OpenTelemetry context.
//!
//! | baggage member | honoured at | effect |
//! |---|---|---|
//! | `demo.fault=order_service_unavailable` | order-service, `CreateOrder` | answers `UNAVAILABLE` (the gateway: 503) and stores nothing |
//! | `demo.fault=stock_out` | worker, `reserve stock` | the step fails; the order ends FAILED |
//! | `demo.fault=payment_declined` | worker, `charge payment` | the step fails; the order ends FAILED |
//! | `demo.delay.create_order=300ms` | order-service, `CreateOrder` | waits first (`ms` or `s`, at most 10 s) |
//! | `demo.delay.reserve_stock=300ms` | worker, `reserve stock` | waits first |
//! | `demo.delay.charge_payment=300ms` | worker, `charge payment` | waits first |
//!
//! Only where `FAULT_INJECTION=baggage` (default `off`). A member that is used is
//! recorded on the span it affects, under its own key (`demo.fault=stock_out`); a value
//! that cannot be used is ignored, named in [`IGNORED_ATTRIBUTE`] and logged as a warning.
//! A gateway with `INBOUND_TRACE_CONTEXT=restart` drops a caller's baggage, so no caller
//! outside the trust boundary can reach these.

use std::str::FromStr;
use std::time::Duration;

use opentelemetry::baggage::BaggageExt;
use settings::{SettingError, Source, parse_or};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The setting that turns fault injection on.
pub const VARIABLE: &str = "FAULT_INJECTION";
/// The baggage key naming a fault.
pub const FAULT_KEY: &str = "demo.fault";
/// The baggage keys asking a step to wait: this prefix, then the step's name.
pub const DELAY_PREFIX: &str = "demo.delay.";
/// The longest delay honoured; a longer one is ignored (a caller cannot park a worker).
pub const MAX_DELAY: Duration = Duration::from_secs(10);
/// Span attribute naming the fault members a step could not use, and why.
pub const IGNORED_ATTRIBUTE: &str = "app.fault.ignored";

/// `FAULT_INJECTION`: whether this service honours fault members in baggage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FaultInjection {
    /// Baggage never changes what the service does (the default).
    #[default]
    Off,
    /// `demo.fault` and `demo.delay.*` in the request's baggage are honoured.
    Baggage,
}

impl FromStr for FaultInjection {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "off" => Ok(Self::Off),
            "baggage" => Ok(Self::Baggage),
            _ => Err("expected off or baggage".to_owned()),
        }
    }
}

impl FaultInjection {
    /// `FAULT_INJECTION`, `off` when unset.
    pub fn from_env(source: &impl Source) -> Result<Self, SettingError> {
        parse_or(source, VARIABLE, Self::Off)
    }

    /// What the current context's baggage asks of `step`. Call it inside the span of
    /// the step (the span the fault affects): the members used, and any that cannot be,
    /// are recorded there.
    pub fn at(self, step: Step) -> Injected {
        if self == Self::Off {
            return Injected::default();
        }
        let span = tracing::Span::current();
        let cx = span.context();
        let baggage = cx.baggage();
        let plan = plan(step, |key| baggage.get(key).map(|value| value.to_string()));
        for (key, value) in &plan.applied {
            span.set_attribute(key.clone(), value.clone());
            tracing::info!(step = step.name(), fault = %format!("{key}={value}"), "fault injected from baggage");
        }
        if !plan.ignored.is_empty() {
            let reasons = plan.ignored.join("; ");
            span.set_attribute(IGNORED_ATTRIBUTE, reasons.clone());
            tracing::warn!(step = step.name(), reason = %reasons, "fault in baggage ignored");
        }
        plan.injected
    }
}

/// A step where a fault can be injected. Each has one fault and one delay key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The order-service's `CreateOrder`, before anything is stored.
    CreateOrder,
    /// The worker's `reserve stock`.
    ReserveStock,
    /// The worker's `charge payment`.
    ChargePayment,
}

impl Step {
    pub const ALL: [Step; 3] = [Self::CreateOrder, Self::ReserveStock, Self::ChargePayment];

    /// The name in its delay key: `demo.delay.{name}`.
    pub fn name(self) -> &'static str {
        match self {
            Self::CreateOrder => "create_order",
            Self::ReserveStock => "reserve_stock",
            Self::ChargePayment => "charge_payment",
        }
    }

    /// The one `demo.fault` value that makes this step fail.
    pub fn fault(self) -> Fault {
        match self {
            Self::CreateOrder => Fault::OrderServiceUnavailable,
            Self::ReserveStock => Fault::StockOut,
            Self::ChargePayment => Fault::PaymentDeclined,
        }
    }

    /// `demo.delay.{name}`.
    pub fn delay_key(self) -> String {
        format!("{DELAY_PREFIX}{}", self.name())
    }
}

/// A `demo.fault` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    OrderServiceUnavailable,
    StockOut,
    PaymentDeclined,
}

impl Fault {
    pub const ALL: [Fault; 3] = [
        Self::OrderServiceUnavailable,
        Self::StockOut,
        Self::PaymentDeclined,
    ];

    /// The value after `demo.fault=`.
    pub fn value(self) -> &'static str {
        match self {
            Self::OrderServiceUnavailable => "order_service_unavailable",
            Self::StockOut => "stock_out",
            Self::PaymentDeclined => "payment_declined",
        }
    }

    /// The whole baggage member, `demo.fault=stock_out`: what a failure reason quotes,
    /// so the person reading it knows the failure was asked for.
    pub fn member(self) -> String {
        format!("{FAULT_KEY}={}", self.value())
    }
}

/// What a step is asked to do: fail, wait, both or neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    /// Set when the step must fail, as this fault.
    pub fault: Option<Fault>,
    /// Set when the step must wait this long first.
    pub delay: Option<Duration>,
}

impl Injected {
    /// Waits the injected delay, if any.
    pub async fn wait(&self) {
        if let Some(delay) = self.delay {
            tokio::time::sleep(delay).await;
        }
    }
}

/// What `step` makes of the members `get` returns, before anything is recorded.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    injected: Injected,
    /// Members used, as (key, value).
    applied: Vec<(String, String)>,
    /// Members that cannot be used, each with its reason.
    ignored: Vec<String>,
}

fn plan(step: Step, get: impl Fn(&str) -> Option<String>) -> Plan {
    let mut plan = Plan::default();
    if let Some(value) = get(FAULT_KEY) {
        let value = value.trim();
        match Fault::ALL.into_iter().find(|f| f.value() == value) {
            Some(fault) if fault == step.fault() => {
                plan.injected.fault = Some(fault);
                plan.applied.push((FAULT_KEY.to_owned(), value.to_owned()));
            }
            // Another step's fault: that step will honour it.
            Some(_) => {}
            None => plan.ignored.push(format!(
                "{FAULT_KEY}={value}: unknown fault (known: {})",
                Fault::ALL.map(Fault::value).join(", ")
            )),
        }
    }
    let delay_key = step.delay_key();
    if let Some(value) = get(&delay_key) {
        let value = value.trim();
        match parse_delay(value) {
            Ok(delay) => {
                plan.injected.delay = Some(delay);
                plan.applied.push((delay_key, value.to_owned()));
            }
            Err(reason) => plan.ignored.push(format!("{delay_key}={value}: {reason}")),
        }
    }
    plan
}

/// `300ms` or `2s`: whole numbers, at most [`MAX_DELAY`].
fn parse_delay(value: &str) -> Result<Duration, String> {
    let expected = || {
        format!(
            "expected a duration such as 300ms or 2s, at most {}s",
            MAX_DELAY.as_secs()
        )
    };
    let (number, millis_per_unit) = if let Some(number) = value.strip_suffix("ms") {
        (number, 1)
    } else if let Some(number) = value.strip_suffix('s') {
        (number, 1000)
    } else {
        return Err(expected());
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(expected());
    }
    let delay = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .filter(|delay| *delay <= MAX_DELAY)
        .ok_or_else(expected)?;
    Ok(delay)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use opentelemetry::KeyValue;
    use opentelemetry::baggage::Baggage;
    use telemetry::testing::{CapturedService, attribute};

    fn members<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_setting_is_off_unless_it_says_baggage() {
        let parse = |source: &dyn Fn(&str) -> Option<String>| FaultInjection::from_env(&source);
        assert_eq!(parse(&|_| None).unwrap(), FaultInjection::Off);
        assert_eq!(
            parse(&|_| Some("baggage".into())).unwrap(),
            FaultInjection::Baggage
        );
        assert_eq!(parse(&|_| Some("off".into())).unwrap(), FaultInjection::Off);
        settings::assert_defaults_and_named_errors(
            parse,
            &[(VARIABLE, "on"), (VARIABLE, "true"), (VARIABLE, "Baggage")],
        );
    }

    #[test]
    fn each_fault_fails_its_own_step_only() {
        for fault in Fault::ALL {
            let sent = [(FAULT_KEY, fault.value())];
            for step in Step::ALL {
                let plan = plan(step, members(&sent));
                if step.fault() == fault {
                    assert_eq!(plan.injected.fault, Some(fault), "{step:?}");
                    assert_eq!(
                        plan.applied,
                        vec![(FAULT_KEY.to_owned(), fault.value().to_owned())]
                    );
                } else {
                    assert_eq!(plan, Plan::default(), "{fault:?} at {step:?}");
                }
            }
        }
    }

    #[test]
    fn a_delay_applies_to_the_step_it_names() {
        let sent = [("demo.delay.reserve_stock", "300ms")];
        let plan = plan(Step::ReserveStock, members(&sent));
        assert_eq!(plan.injected.delay, Some(Duration::from_millis(300)));
        assert_eq!(
            plan.applied,
            vec![("demo.delay.reserve_stock".to_owned(), "300ms".to_owned())]
        );
        assert_eq!(
            super::plan(Step::ChargePayment, members(&sent)),
            Plan::default()
        );
        let both = [
            (FAULT_KEY, "payment_declined"),
            ("demo.delay.charge_payment", "2s"),
        ];
        let plan = super::plan(Step::ChargePayment, members(&both));
        assert_eq!(
            plan.injected,
            Injected {
                fault: Some(Fault::PaymentDeclined),
                delay: Some(Duration::from_secs(2)),
            }
        );
    }

    #[test]
    fn delays_are_whole_milliseconds_or_seconds_up_to_the_limit() {
        assert_eq!(parse_delay("0ms"), Ok(Duration::ZERO));
        assert_eq!(parse_delay("10s"), Ok(MAX_DELAY));
        assert_eq!(parse_delay("10000ms"), Ok(MAX_DELAY));
        for bad in [
            "",
            "300",
            "ms",
            "s",
            "-1s",
            "+1s",
            "1.5s",
            "11s",
            "10001ms",
            "1m",
            "3 s",
            "99999999999999999999s",
        ] {
            assert!(parse_delay(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn unusable_values_are_ignored_with_a_reason() {
        let sent = [
            (FAULT_KEY, "disk_full"),
            ("demo.delay.create_order", "forever"),
        ];
        let plan = plan(Step::CreateOrder, members(&sent));
        assert_eq!(plan.injected, Injected::default());
        assert!(plan.applied.is_empty());
        assert_eq!(plan.ignored.len(), 2, "{:?}", plan.ignored);
        assert!(
            plan.ignored[0].starts_with(
                "demo.fault=disk_full: unknown fault (known: order_service_unavailable"
            ),
            "{:?}",
            plan.ignored
        );
        assert!(
            plan.ignored[1].starts_with("demo.delay.create_order=forever: expected a duration"),
            "{:?}",
            plan.ignored
        );
    }

    /// Runs `step` in a span whose parent context carries `baggage`, with `setting`, and
    /// returns what was injected and the span as exported.
    fn run_in_span(
        setting: FaultInjection,
        step: Step,
        baggage: &[(&'static str, &'static str)],
    ) -> (Injected, opentelemetry_sdk::trace::SpanData) {
        let service = CapturedService::new("faults-test");
        let injected = tracing::dispatcher::with_default(service.dispatch(), || {
            let cx = opentelemetry::Context::new().with_baggage(Baggage::from_iter(
                baggage.iter().map(|(k, v)| KeyValue::new(*k, *v)),
            ));
            let span = tracing::info_span!("step");
            span.set_parent(cx).unwrap();
            span.in_scope(|| setting.at(step))
        });
        let spans = service.spans();
        assert_eq!(spans.len(), 1);
        (injected, spans.into_iter().next().unwrap())
    }

    #[test]
    fn members_used_are_recorded_on_the_current_span() {
        let (injected, span) = run_in_span(
            FaultInjection::Baggage,
            Step::ReserveStock,
            &[
                ("demo.fault", "stock_out"),
                ("demo.delay.reserve_stock", "5ms"),
                ("tenant", "acme"),
            ],
        );
        assert_eq!(injected.fault, Some(Fault::StockOut));
        assert_eq!(injected.delay, Some(Duration::from_millis(5)));
        assert_eq!(attribute(&span, "demo.fault").as_deref(), Some("stock_out"));
        assert_eq!(
            attribute(&span, "demo.delay.reserve_stock").as_deref(),
            Some("5ms")
        );
        assert_eq!(attribute(&span, "tenant"), None, "only fault members");
        assert_eq!(attribute(&span, IGNORED_ATTRIBUTE), None);
    }

    #[test]
    fn an_unusable_member_is_a_warning_on_the_span_never_a_failure() {
        let (injected, span) = run_in_span(
            FaultInjection::Baggage,
            Step::ChargePayment,
            &[("demo.delay.charge_payment", "lots")],
        );
        assert_eq!(injected, Injected::default());
        let ignored = attribute(&span, IGNORED_ATTRIBUTE).unwrap();
        assert!(
            ignored.starts_with("demo.delay.charge_payment=lots"),
            "{ignored}"
        );
        assert!(
            span.events
                .iter()
                .any(|e| e.name == "fault in baggage ignored"),
            "the warning is an event of the span: {:?}",
            span.events
        );
    }

    #[test]
    fn off_reads_no_baggage_and_records_nothing() {
        let (injected, span) = run_in_span(
            FaultInjection::Off,
            Step::ReserveStock,
            &[
                ("demo.fault", "stock_out"),
                ("demo.delay.reserve_stock", "lots"),
            ],
        );
        assert_eq!(injected, Injected::default());
        assert_eq!(attribute(&span, "demo.fault"), None);
        assert_eq!(attribute(&span, IGNORED_ATTRIBUTE), None);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_delay() {
        let start = tokio::time::Instant::now();
        Injected::default().wait().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        Injected {
            fault: None,
            delay: Some(Duration::from_millis(300)),
        }
        .wait()
        .await;
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }
}
