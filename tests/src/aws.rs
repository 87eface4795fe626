//! The AWS SDK configuration of the integration tests: the SDK's own loader, which reads
//! `AWS_ENDPOINT_URL` (set by `localstack/up`), so the tests talk to the emulator without any
//! mechanism of their own.

use anyhow::{Context, bail};
use aws_config::{BehaviorVersion, SdkConfig};

/// The emulator's URL from `AWS_ENDPOINT_URL`, or an error that says how to start one.
///
/// Emulator-backed tests call this first so that a missing emulator fails loudly instead of
/// reaching for real AWS or being skipped.
pub fn endpoint_url() -> anyhow::Result<String> {
    match std::env::var("AWS_ENDPOINT_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(url),
        _ => bail!(
            "AWS_ENDPOINT_URL is not set: this test needs the AWS emulator. Run it through the \
             project's test script, or start the emulator first: eval \"$(localstack/up)\""
        ),
    }
}

/// One SDK config for every client of a test, from the default loader (environment, profile),
/// with us-east-1 when no region is configured: the emulator's data plane only serves there.
pub async fn sdk_config() -> anyhow::Result<SdkConfig> {
    endpoint_url()?;
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(gatehouse_provisioner::aws::https_client())
        .load()
        .await;
    Ok(match sdk.region() {
        Some(_) => sdk,
        None => sdk.into_builder().region(aws_config::Region::new("us-east-1")).build(),
    })
}

/// An ELBv2 client on [`sdk_config`].
pub async fn elbv2_client() -> anyhow::Result<aws_sdk_elasticloadbalancingv2::Client> {
    let config = sdk_config().await.context("loading the AWS SDK config")?;
    Ok(aws_sdk_elasticloadbalancingv2::Client::new(&config))
}
