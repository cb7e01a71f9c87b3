//! Prometheus' HTTP API, as the tests query it.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Url;
use serde_json::Value;

/// Prometheus' HTTP API.
pub struct Prometheus {
    pub url: String,
    pub http: reqwest::Client,
}

impl Prometheus {
    /// `GET /api/v1/{endpoint}?{params}`, its JSON answer.
    async fn get(&self, endpoint: &str, params: &[(&str, &str)]) -> Value {
        let url =
            Url::parse_with_params(&format!("{}/api/v1/{endpoint}", self.url), params).unwrap();
        self.http
            .get(url.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// An instant query: each series' labels and value.
    pub async fn query(&self, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let answer = self.get("query", &[("query", promql)]).await;
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = series["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// `sum by (label) (...)` as a map from the label's value.
    pub async fn by(&self, label: &str, promql: &str) -> BTreeMap<String, f64> {
        self.query(&format!("sum by ({label}) ({promql})"))
            .await
            .into_iter()
            .map(|(labels, value)| (labels.get(label).cloned().unwrap_or_default(), value))
            .collect()
    }

    /// The trace ids of the exemplars kept for a query over the last `window`.
    pub async fn exemplar_trace_ids(&self, promql: &str, window: Duration) -> Vec<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let start = (now - window).as_secs().to_string();
        let end = (now + Duration::from_secs(60)).as_secs().to_string();
        let answer = self
            .get(
                "query_exemplars",
                &[("query", promql), ("start", &start), ("end", &end)],
            )
            .await;
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|series| series["exemplars"].as_array().unwrap().iter())
            .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_owned))
            .collect()
    }
}
