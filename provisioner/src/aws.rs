//! The AWS adapter: one SDK config loader, the ELBv2 and EC2 clients derived from it, every call
//! counted, and every SDK error mapped to one sentence in [`map_sdk_error`]. It translates
//! between the SDK's types and [`crate::model`]; the decisions are made elsewhere.
//!
//! Every SDK operation the provisioner makes is a `self.elb.<operation>()` or
//! `self.ec2.<operation>()` call in this file; `tests/tests/provisioner_iam_policy.rs` reads them
//! from here and checks that the Terraform module's IAM policy allows exactly those.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_elasticloadbalancingv2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_elasticloadbalancingv2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetGroup};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, Metadata};

use crate::handshake::Tagged;
use crate::metrics::ApiCalls;
use crate::model::{IpFamily, ObservedTarget, Target, TargetGroupFacts, VpcCidrs};

/// Most resources one DescribeTags call takes (ELBv2's limit).
pub const DESCRIBE_TAGS_BATCH: usize = 20;

/// Most targets one RegisterTargets/DeregisterTargets call carries (what the AWS Load Balancer
/// Controller uses too); a whole cluster's nodes normally fit in one call.
pub const BATCH: usize = 200;

/// Why an AWS call failed, in one sentence.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    #[error("cannot reach the AWS endpoint {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error(
        "no AWS credentials found by the default credential chain (environment, profile, web identity, ECS, instance metadata)"
    )]
    NoCredentials,
    #[error("no AWS region configured: set AWS_REGION (or a profile region), or pass a handshake file that names one")]
    NoRegion,
    #[error("target group {arn} does not exist at {endpoint}")]
    TargetGroupNotFound { arn: String, endpoint: String },
    #[error("AWS {operation} at {endpoint} was refused: {code}: {message}")]
    Service { operation: &'static str, endpoint: String, code: String, message: String },
    #[error("AWS {operation} at {endpoint} timed out after retries: {detail}")]
    Timeout { operation: &'static str, endpoint: String, detail: String },
    #[error("AWS {operation} at {endpoint} failed: {detail}")]
    Other { operation: &'static str, endpoint: String, detail: String },
}

impl AwsError {
    /// Whether the target group itself is gone (then a session must be opened anew).
    pub fn is_target_group_gone(&self) -> bool {
        matches!(self, Self::TargetGroupNotFound { .. })
    }
}

/// The one HTTPS client of every AWS call: hyper 1 and rustls with ring, the system's trust
/// roots. (The SDK's default client would bring aws-lc-rs as a second crypto provider.)
pub fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https()
}

/// Loads the one SDK config: default credential chain and region (falling back to
/// `fallback_region`, e.g. the handshake's), explicit retry and timeout policy. The SDK itself
/// honours `AWS_ENDPOINT_URL`.
pub async fn load_sdk_config(fallback_region: Option<String>) -> SdkConfig {
    // The loader's own region chain (environment, profile, IMDS) uses the HTTP client given
    // here; a chain built outside it would reach for the SDK's default client, which is not
    // compiled in.
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        // Standard: retries throttling, 5xx and dropped connections with jittered exponential
        // backoff, within a retry quota. Not adaptive: its client-side rate limiter charges a
        // throttled retry 10 tokens from a bucket that then holds about 1, so one Throttling answer
        // delayed the retry by 20 s, and persistent throttling ended as a 40 s operation timeout
        // that hid the cause (tests/tests/provisioner_faults.rs). `watch` backs off on its own.
        .retry_config(RetryConfig::standard().with_max_attempts(5).with_initial_backoff(Duration::from_millis(200)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(10))
                .operation_timeout(Duration::from_secs(40))
                .build(),
        )
        .load()
        .await;
    match fallback_region {
        Some(region) if sdk.region().is_none() => sdk.into_builder().region(Region::new(region)).build(),
        _ => sdk,
    }
}

/// The ELBv2 and EC2 calls the provisioner makes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Aws {
    elb: aws_sdk_elasticloadbalancingv2::Client,
    ec2: aws_sdk_ec2::Client,
    endpoint: String,
}

impl Aws {
    /// Derives the clients from the SDK config, counting every operation into `calls`.
    pub fn new(sdk: &SdkConfig, calls: ApiCalls) -> Result<Self, AwsError> {
        let region = sdk.region().ok_or(AwsError::NoRegion)?;
        let endpoint = sdk
            .endpoint_url()
            .map_or_else(|| format!("https://elasticloadbalancing.{region}.amazonaws.com"), str::to_owned);
        let elb = aws_sdk_elasticloadbalancingv2::config::Builder::from(sdk)
            .interceptor(CountCalls { calls: calls.clone() })
            .build();
        let ec2 = aws_sdk_ec2::config::Builder::from(sdk).interceptor(CountCalls { calls }).build();
        Ok(Self {
            elb: aws_sdk_elasticloadbalancingv2::Client::from_conf(elb),
            ec2: aws_sdk_ec2::Client::from_conf(ec2),
            endpoint,
        })
    }

    /// The target group with this ARN; `None` if it does not exist.
    pub async fn target_group(&self, arn: &str) -> Result<Option<TargetGroupFacts>, AwsError> {
        let pages = self.elb.describe_target_groups().target_group_arns(arn).into_paginator().items().send();
        match pages.try_collect().await {
            Ok(groups) => Ok(groups.iter().find(|g| g.target_group_arn() == Some(arn)).map(facts)),
            Err(e) if e.code() == Some("TargetGroupNotFound") => Ok(None),
            Err(e) => Err(self.map(e, "DescribeTargetGroups")),
        }
    }

    /// The target group with this name (used only to tell "replaced" from "deleted").
    pub async fn target_group_named(&self, name: &str) -> Result<Option<TargetGroupFacts>, AwsError> {
        let pages = self.elb.describe_target_groups().names(name).into_paginator().items().send();
        match pages.try_collect().await {
            Ok(groups) => Ok(groups.iter().find(|g| g.target_group_name() == Some(name)).map(facts)),
            Err(e) if e.code() == Some("TargetGroupNotFound") => Ok(None),
            Err(e) => Err(self.map(e, "DescribeTargetGroups")),
        }
    }

    /// Every target group in the region with its tags: DescribeTargetGroups (all pages), then
    /// DescribeTags for at most [`DESCRIBE_TAGS_BATCH`] groups a call, as the AWS Load Balancer
    /// Controller finds its target groups without the Resource Groups Tagging API.
    pub async fn tagged_target_groups(&self) -> Result<Vec<Tagged>, AwsError> {
        let pages = self.elb.describe_target_groups().into_paginator().items().send();
        let groups: Vec<TargetGroup> = pages.try_collect().await.map_err(|e| self.map(e, "DescribeTargetGroups"))?;
        let mut tags: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let arns: Vec<String> = groups.iter().filter_map(|g| g.target_group_arn().map(str::to_owned)).collect();
        for chunk in arns.chunks(DESCRIBE_TAGS_BATCH) {
            let out = self
                .elb
                .describe_tags()
                .set_resource_arns(Some(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| self.map(e, "DescribeTags"))?;
            for description in out.tag_descriptions() {
                let Some(arn) = description.resource_arn() else { continue };
                let pairs =
                    description.tags().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())));
                tags.entry(arn.to_owned()).or_default().extend(pairs);
            }
        }
        Ok(groups
            .iter()
            .map(facts)
            .map(|f| {
                let t = tags.remove(&f.arn).unwrap_or_default();
                (f, t)
            })
            .collect())
    }

    /// The endpoint the calls go to, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The deregistration delay attribute, in seconds.
    pub async fn deregistration_delay(&self, arn: &str) -> Result<Option<u64>, AwsError> {
        let out = self
            .elb
            .describe_target_group_attributes()
            .target_group_arn(arn)
            .send()
            .await
            .map_err(|e| self.map_tg(e, "DescribeTargetGroupAttributes", arn))?;
        Ok(out
            .attributes()
            .iter()
            .find(|a| a.key() == Some("deregistration_delay.timeout_seconds"))
            .and_then(|a| a.value())
            .and_then(|v| v.parse().ok()))
    }

    /// The VPC's associated IPv4 and IPv6 CIDR blocks.
    pub async fn vpc_cidrs(&self, vpc_id: &str) -> Result<VpcCidrs, AwsError> {
        let out = self.ec2.describe_vpcs().vpc_ids(vpc_id).send().await.map_err(|e| self.map(e, "DescribeVpcs"))?;
        let associated = |state: Option<&aws_sdk_ec2::types::VpcCidrBlockState>| {
            state.and_then(|s| s.state()).is_none_or(|s| s.as_str() == "associated")
        };
        let mut blocks: Vec<String> = Vec::new();
        for vpc in out.vpcs() {
            blocks.extend(
                vpc.cidr_block_association_set()
                    .iter()
                    .filter(|a| associated(a.cidr_block_state()))
                    .filter_map(|a| a.cidr_block().map(str::to_owned)),
            );
            blocks.extend(vpc.cidr_block().map(str::to_owned));
            blocks.extend(
                vpc.ipv6_cidr_block_association_set()
                    .iter()
                    .filter(|a| associated(a.ipv6_cidr_block_state()))
                    .filter_map(|a| a.ipv6_cidr_block().map(str::to_owned)),
            );
        }
        Ok(VpcCidrs::parse(blocks.iter().map(String::as_str)))
    }

    /// The group's targets with their state, restricted to `only` when not empty; one call (the
    /// operation is not paginated). `default_port` fills in targets reported without a port.
    pub async fn target_health(
        &self,
        arn: &str,
        default_port: u16,
        only: &[Target],
    ) -> Result<Vec<ObservedTarget>, AwsError> {
        let out = self
            .elb
            .describe_target_health()
            .target_group_arn(arn)
            .set_targets((!only.is_empty()).then(|| only.iter().map(|t| describe(t, None)).collect()))
            .send()
            .await
            .map_err(|e| self.map_tg(e, "DescribeTargetHealth", arn))?;
        Ok(out
            .target_health_descriptions()
            .iter()
            .filter_map(|d| {
                let t = d.target()?;
                let health = d.target_health();
                Some(ObservedTarget {
                    target: Target {
                        id: t.id()?.to_owned(),
                        port: t.port().and_then(|p| u16::try_from(p).ok()).unwrap_or(default_port),
                    },
                    state: health.and_then(|h| h.state()).map_or("unknown", |s| s.as_str()).to_owned(),
                    reason: health.and_then(|h| h.reason()).map(|r| r.as_str().to_owned()),
                })
            })
            .collect())
    }

    /// One RegisterTargets call: at most [`BATCH`] targets, each with the AvailabilityZone it
    /// needs (`all` outside the VPC).
    pub async fn register(&self, arn: &str, targets: &[(Target, Option<&str>)]) -> Result<(), AwsError> {
        self.elb
            .register_targets()
            .target_group_arn(arn)
            .set_targets(Some(targets.iter().map(|(t, az)| describe(t, *az)).collect()))
            .send()
            .await
            .map_err(|e| self.map_tg(e, "RegisterTargets", arn))?;
        Ok(())
    }

    /// One DeregisterTargets call: at most [`BATCH`] targets. A target that is no longer
    /// registered is deregistered already: another run, or an attempt of this very call whose
    /// answer was lost (the SDK retries it), got there first. Some ELBv2 implementations refuse
    /// that with `InvalidTarget` (moto does, and stops midway through the batch): then the
    /// batch's targets are read back, and those still registered deregistered once more.
    pub async fn deregister(&self, arn: &str, targets: &[Target]) -> Result<(), AwsError> {
        let call = |targets: &[Target]| {
            self.elb
                .deregister_targets()
                .target_group_arn(arn)
                .set_targets(Some(targets.iter().map(|t| describe(t, None)).collect()))
                .send()
        };
        match call(targets).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("InvalidTarget") => {
                let port = targets.first().map_or(0, |t| t.port);
                let observed = self.target_health(arn, port, targets).await?;
                let still: Vec<Target> = observed
                    .into_iter()
                    .filter(|o| !o.is_draining() && o.reason.as_deref() != Some("Target.NotRegistered"))
                    .map(|o| o.target)
                    .filter(|t| targets.contains(t))
                    .collect();
                if !still.is_empty() {
                    call(&still).await.map_err(|e| self.map_tg(e, "DeregisterTargets", arn))?;
                }
                Ok(())
            }
            Err(e) => Err(self.map_tg(e, "DeregisterTargets", arn)),
        }
    }

    fn map<E>(&self, err: SdkError<E, HttpResponse>, operation: &'static str) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        map_sdk_error(err, operation, &self.endpoint)
    }

    fn map_tg<E>(&self, err: SdkError<E, HttpResponse>, operation: &'static str, arn: &str) -> AwsError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        if err.code() == Some("TargetGroupNotFound") {
            return AwsError::TargetGroupNotFound { arn: arn.to_owned(), endpoint: self.endpoint.clone() };
        }
        self.map(err, operation)
    }
}

fn describe(t: &Target, availability_zone: Option<&str>) -> TargetDescription {
    TargetDescription::builder()
        .id(&t.id)
        .port(i32::from(t.port))
        .set_availability_zone(availability_zone.map(str::to_owned))
        .build()
}

fn facts(g: &TargetGroup) -> TargetGroupFacts {
    TargetGroupFacts {
        arn: g.target_group_arn().unwrap_or_default().to_owned(),
        name: g.target_group_name().unwrap_or_default().to_owned(),
        port: g.port().and_then(|p| u16::try_from(p).ok()),
        target_type: g.target_type().map_or("instance", |t| t.as_str()).to_owned(),
        family: IpFamily::from_ip_address_type(g.ip_address_type().map(|t| t.as_str())),
        protocol: g.protocol().map(|p| p.as_str().to_owned()),
        health_check_path: g.health_check_path().map(str::to_owned),
        vpc_id: g.vpc_id().map(str::to_owned),
    }
}

/// The one place SDK errors become sentences.
pub fn map_sdk_error<E>(err: SdkError<E, HttpResponse>, operation: &'static str, endpoint: &str) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let endpoint = endpoint.to_owned();
    match &err {
        SdkError::ServiceError(_) => AwsError::Service {
            operation,
            endpoint,
            code: err.code().unwrap_or("unknown error").to_owned(),
            message: err.message().unwrap_or("no message").to_owned(),
        },
        SdkError::TimeoutError(_) => AwsError::Timeout { operation, endpoint, detail: root_cause(&err) },
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
            AwsError::Unreachable { endpoint, detail: root_cause(&err) }
        }
        SdkError::DispatchFailure(_) => {
            let detail = DisplayErrorContext(&err).to_string();
            // Identity resolution fails in the transmit phase, so it surfaces as a dispatch failure.
            if detail.to_ascii_lowercase().contains("credentials") {
                AwsError::NoCredentials
            } else {
                AwsError::Other { operation, endpoint, detail: root_cause(&err) }
            }
        }
        _ => AwsError::Other { operation, endpoint, detail: root_cause(&err) },
    }
}

/// The innermost cause: the part of the chain a reader can act on.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    // One sentence: some causes (the credential chain's) span lines.
    current.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Counts every finished operation (one per operation, whatever its retries) by outcome.
#[derive(Debug)]
struct CountCalls {
    calls: ApiCalls,
}

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "gatehouse-count-calls"
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let operation = cfg.load::<Metadata>().map_or("unknown", |m| m.name());
        let outcome = match context.output_or_error() {
            Some(Ok(_)) => "ok",
            Some(Err(e)) if e.is_operation_error() => "service_error",
            Some(Err(e)) if e.is_timeout_error() => "timeout",
            Some(Err(e)) if e.is_connector_error() => "unreachable",
            _ => "error",
        };
        self.calls.record(operation, outcome);
        Ok(())
    }
}
