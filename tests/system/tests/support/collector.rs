//! A Collector's own metrics (its Prometheus endpoint): read once, summed by name.

/// One reading of a Collector's `/metrics`.
pub struct SelfMetrics {
    text: String,
}

impl SelfMetrics {
    /// Reads `url`; panics if what answers there is not a Collector.
    pub fn read(runtime: &tokio::runtime::Runtime, http: &reqwest::Client, url: &str) -> Self {
        let text = runtime.block_on(async {
            http.get(url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"))
                .text()
                .await
                .unwrap_or_else(|e| panic!("{url}: {e}"))
        });
        assert!(
            text.contains("otelcol_process_uptime"),
            "not a Collector's metrics at {url}:\n{text}"
        );
        Self { text }
    }

    /// The sum of counter `name` over its label sets that contain `label` (`""` for all).
    /// Collector v0.161 names its counters without `_total`.
    pub fn sum(&self, name: &str, label: &str) -> f64 {
        self.text
            .lines()
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
            .filter(|line| line.contains(label))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}
