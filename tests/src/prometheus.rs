//! Prometheus from the test's side: a parser for the text exposition format (to read what
//! `/api/metrics` and an agent's `/metrics` say), `promtool` (Debian's `prometheus` package)
//! to lint it and to check config and rule files, and a real Prometheus server started on
//! loopback that scrapes the cluster and answers PromQL over its HTTP API.
//!
//! Nothing here is optional: when `promtool` or `prometheus` is not installed, the helpers
//! fail and say how to install them, they never skip.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tempfile::TempDir;

use crate::cluster::free_port;
use crate::process::ChildProcess;
use crate::wait::wait_until;

/// How long the Prometheus server may take to say it is ready.
const PROMETHEUS_START_TIMEOUT: Duration = Duration::from_secs(60);

/// One sample of an exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// Whether every `(name, value)` pair of `labels` is among this sample's labels.
    pub fn has_labels(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// A parsed exposition (Prometheus text format 0.0.4).
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// `# TYPE` lines: metric family → type.
    pub types: BTreeMap<String, String>,
    /// `# HELP` lines: metric family → help text.
    pub help: BTreeMap<String, String>,
}

impl Exposition {
    /// Parses the text format; fails on the first line it cannot read, naming it.
    pub fn parse(text: &str) -> Result<Self> {
        let mut out = Self::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix('#') {
                let mut words = rest.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        out.types.insert(name.to_owned(), kind.trim().to_owned());
                    }
                    (Some("HELP"), Some(name), help) => {
                        out.help
                            .insert(name.to_owned(), help.unwrap_or_default().to_owned());
                    }
                    _ => {}
                }
                continue;
            }
            let sample =
                parse_sample(line).with_context(|| format!("line {}: {line:?}", number + 1))?;
            out.samples.push(sample);
        }
        Ok(out)
    }

    /// Every sample of the metric `name` whose labels include `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.has_labels(labels))
    }

    /// The value of the one sample of `name` with `labels`; fails when there is none or more
    /// than one.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        let found: Vec<&Sample> = self.find(name, labels).collect();
        match found.as_slice() {
            [one] => Ok(one.value),
            [] => bail!(
                "no sample {name}{labels:?} in the exposition; samples of {name}: {:?}",
                self.find(name, &[]).collect::<Vec<_>>()
            ),
            many => bail!("{} samples match {name}{labels:?}: {many:?}", many.len()),
        }
    }

    /// The sum of every sample of `name` with `labels` (0 when there is none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).map(|s| s.value).sum()
    }

    /// Whether a sample of `name` with `labels` is present.
    pub fn has_sample(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.find(name, labels).next().is_some()
    }

    /// Whether any sample of the metric family `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value after the metric name")?;
    let name = line[..name_end].to_owned();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = after_brace;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').context("label without '='")?;
            let key = rest[..eq].trim().to_owned();
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .context("label value does not start with '\"'")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated escape in a label value"),
                    },
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            };
            rest = &rest[end + 1..];
            labels.insert(key, value);
        }
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .context("no value after the labels")?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        text => text
            .parse()
            .with_context(|| format!("value {text:?} is not a number"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Finds an installed program on `PATH` (or in `/usr/sbin`, `/usr/bin`), failing with how
/// to install it.
pub fn find_program(name: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .with_context(|| {
            format!(
                "`{name}` is not installed: it comes with Debian's `prometheus` package; \
                 run scripts/setup-host.sh as root (or `apt-get install prometheus`)"
            )
        })
}

/// What `promtool` said.
#[derive(Debug, Clone)]
pub struct PromtoolOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl PromtoolOutput {
    /// Fails, showing what promtool printed, unless it exited 0.
    pub fn ensure_success(&self, what: &str) -> Result<()> {
        if self.success {
            Ok(())
        } else {
            bail!(
                "promtool refused {what} (exit {:?}):\n{}\n{}",
                self.code,
                self.stdout.trim(),
                self.stderr.trim()
            )
        }
    }
}

/// Runs `promtool <args>`, with `stdin` as its standard input.
pub async fn promtool(args: &[&str], stdin: Option<&str>) -> Result<PromtoolOutput> {
    let program = find_program("promtool")?;
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    let stdin = stdin.map(str::to_owned);
    let run = move || -> Result<PromtoolOutput> {
        let mut child = std::process::Command::new(&program)
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", program.display()))?;
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().context("promtool's stdin")?;
            pipe.write_all(text.as_bytes())
                .context("writing to promtool's stdin")?;
        }
        let output = child.wait_with_output().context("waiting for promtool")?;
        Ok(PromtoolOutput {
            success: output.status.success(),
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(60), tokio::task::spawn_blocking(run))
        .await
        .context("promtool did not finish within 60 s")?
        .context("the promtool task panicked")?
}

/// One lint finding of `promtool check metrics`: the metric and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LintProblem {
    pub metric: String,
    pub text: String,
}

/// Runs `promtool check metrics` on an exposition. Fails when promtool cannot parse it (a
/// format error is never acceptable); returns its lint findings otherwise (empty when it
/// exited 0).
pub async fn promtool_check_metrics(exposition: &str) -> Result<Vec<LintProblem>> {
    let output = promtool(&["check", "metrics"], Some(exposition)).await?;
    if output.success {
        return Ok(Vec::new());
    }
    let printed = format!("{}\n{}", output.stdout, output.stderr);
    // Exit 3 is "lint problems found"; anything else (1: the text does not parse) fails.
    if output.code != Some(3) || printed.contains("error while linting") {
        bail!(
            "promtool check metrics could not read the exposition (exit {:?}): {}",
            output.code,
            printed.trim()
        );
    }
    Ok(printed
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (metric, text) = line.split_once(' ').unwrap_or((line, ""));
            LintProblem {
                metric: metric.to_owned(),
                text: text.to_owned(),
            }
        })
        .collect())
}

/// One scrape job of a test Prometheus.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    pub job: String,
    /// `host:port`.
    pub target: String,
    pub metrics_path: String,
}

impl ScrapeJob {
    pub fn new(job: &str, target: &str, metrics_path: &str) -> Self {
        Self {
            job: job.to_owned(),
            target: target.to_owned(),
            metrics_path: metrics_path.to_owned(),
        }
    }
}

/// One series of an instant-query answer.
#[derive(Debug, Clone)]
pub struct QuerySample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A real Prometheus server (Debian's `prometheus`) on a free loopback port, scraping the
/// given jobs every second, with its storage in a temporary directory. Killed on drop;
/// `VMM_E2E_KEEP=1` keeps its directory (config, log, TSDB).
#[derive(Debug)]
pub struct PrometheusServer {
    process: ChildProcess,
    url: String,
    http: reqwest::Client,
    dir: Option<TempDir>,
}

impl PrometheusServer {
    /// Starts Prometheus and waits until `/-/ready` answers 200.
    pub async fn start(jobs: &[ScrapeJob]) -> Result<Self> {
        let program = find_program("prometheus")?;
        let dir = tempfile::Builder::new()
            .prefix("vmm-e2e-prometheus-")
            .tempdir()?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, scrape_config(jobs))?;
        let listen = free_port()?;
        let args: Vec<OsString> = vec![
            format!("--config.file={}", config_path.display()).into(),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()).into(),
            format!("--web.listen-address={listen}").into(),
            "--log.level=info".into(),
        ];
        let mut process = ChildProcess::spawn(
            "prometheus",
            &program,
            &args,
            &[],
            dir.path().join("prometheus.log"),
        )?;
        let url = format!("http://{listen}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let ready = wait_until("Prometheus to be ready", PROMETHEUS_START_TIMEOUT, || {
            let exited = process.ensure_running();
            let request = http.get(format!("{url}/-/ready")).send();
            async move {
                if let Err(err) = exited {
                    return Ok(Some(Err(err)));
                }
                Ok(request.await?.status().is_success().then_some(Ok(())))
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(err)) | Err(err) => {
                return Err(err.context(format!("prometheus log:\n{}", process.log_tail(30))));
            }
        }
        Ok(Self {
            process,
            url,
            http,
            dir: Some(dir),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// An instant query (`/api/v1/query`); fails when Prometheus refuses it (e.g. a PromQL
    /// syntax error), with its error text.
    pub async fn query(&self, promql: &str) -> Result<Vec<QuerySample>> {
        let response = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", promql)])
            .send()
            .await
            .with_context(|| format!("querying Prometheus for {promql}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("reading Prometheus' answer to {promql}"))?;
        if !status.is_success() || body["status"] != "success" {
            bail!("Prometheus refused {promql:?} ({status}): {body}");
        }
        let data = &body["data"];
        let results = match data["resultType"].as_str() {
            Some("vector") => data["result"].as_array().cloned().unwrap_or_default(),
            Some("scalar") => vec![serde_json::json!({"metric": {}, "value": data["result"]})],
            other => bail!("unexpected result type {other:?} for {promql:?}: {body}"),
        };
        results
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()
                    .map(|map| {
                        map.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let value = series["value"][1]
                    .as_str()
                    .with_context(|| format!("no value in {series}"))?
                    .parse::<f64>()
                    .with_context(|| format!("value of {series} is not a number"))?;
                Ok(QuerySample { labels, value })
            })
            .collect()
    }

    /// Polls `promql` until it answers exactly one series whose value is `expected`, for at
    /// most `timeout`; the failure shows the last answer.
    pub async fn wait_for_value(
        &self,
        promql: &str,
        expected: f64,
        timeout: Duration,
    ) -> Result<()> {
        let last = Mutex::new(String::from("(no answer yet)"));
        let outcome = wait_until(
            &format!("Prometheus to answer {promql} = {expected}"),
            timeout,
            || {
                let answer = self.query(promql);
                let last = &last;
                async move {
                    let samples = answer.await?;
                    *last.lock().expect("not poisoned") = format!("{samples:?}");
                    Ok(matches!(samples.as_slice(), [one] if one.value == expected).then_some(()))
                }
            },
        )
        .await;
        outcome.map_err(|err| {
            err.context(format!(
                "last answer: {}\nprometheus log:\n{}",
                last.lock().expect("not poisoned"),
                self.log_tail(20)
            ))
        })
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        self.process.kill();
        if std::env::var_os("VMM_E2E_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("VMM_E2E_KEEP is set: keeping {}", dir.keep().display());
        }
    }
}

/// A Prometheus configuration scraping `jobs` every second.
fn scrape_config(jobs: &[ScrapeJob]) -> String {
    let mut config = String::from(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
    );
    config.push_str(if jobs.is_empty() {
        "scrape_configs: []\n"
    } else {
        "scrape_configs:\n"
    });
    for job in jobs {
        let _ = write!(
            config,
            "  - job_name: {:?}\n    metrics_path: {:?}\n    static_configs:\n      - targets: [{:?}]\n",
            job.job, job.metrics_path, job.target
        );
    }
    config
}

/// The path of a file of the repository, from the `tests/` crate's directory.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .join(relative)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_braces_escapes_and_special_values() {
        let text = "# HELP http_requests_total Requests.\n\
                    # TYPE http_requests_total counter\n\
                    http_requests_total{method=\"GET\",endpoint=\"/api/vms/{id}\",status=\"200\"} 3\n\
                    weird{a=\"x\\\"y\\\\z\",b=\"1\"} +Inf\n\
                    bare 1.5e3 1700000000\n";
        let exposition = Exposition::parse(text).unwrap();
        assert_eq!(exposition.types["http_requests_total"], "counter");
        assert_eq!(exposition.help["http_requests_total"], "Requests.");
        assert_eq!(
            exposition
                .value("http_requests_total", &[("endpoint", "/api/vms/{id}")])
                .unwrap(),
            3.0
        );
        let weird = exposition.find("weird", &[]).next().unwrap();
        assert_eq!(weird.labels["a"], "x\"y\\z");
        assert!(weird.value.is_infinite());
        assert_eq!(exposition.value("bare", &[]).unwrap(), 1500.0);
    }
}
