//! Keeps the agent's certificate fresh: when two thirds of its lifetime
//! have passed, a new key is made here and its signing request goes to the
//! scheduler over the bus (`devctl.node.<node>.renew`); the new bundle
//! replaces `DATA_DIR/tls` as a whole. The bus client reads the files again
//! at its next connection, so nothing restarts.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use devctl_proto::pki::{self, Bundle};
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;

/// How long to wait before renewing a certificate valid from `issued` to
/// `expires`, at `now`: until two thirds of its lifetime have passed.
pub fn renew_wait(issued: SystemTime, expires: SystemTime, now: SystemTime) -> Duration {
    let lifetime = expires.duration_since(issued).unwrap_or_default();
    let renew_at = issued + lifetime * 2 / 3;
    renew_at.duration_since(now).unwrap_or_default()
}

/// After a failed attempt: a quarter of what is left, between 1 s and 1 min.
fn retry_wait(expires: SystemTime, now: SystemTime) -> Duration {
    (expires.duration_since(now).unwrap_or_default() / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

async fn renew_once(
    bus: &Bus,
    node: &str,
    tls_dir: &std::path::Path,
) -> Result<SystemTime, String> {
    let (key_pem, csr_pem) = pki::key_and_csr(node).map_err(|e| e.to_string())?;
    let current = Bundle::load(tls_dir)
        .and_then(|b| b.serial())
        .unwrap_or_default();
    let issued = bus
        .renew(csr_pem, current)
        .await
        .map_err(|e| e.to_string())?;
    let bundle = Bundle {
        ca_pem: issued.ca_pem,
        cert_pem: issued.cert_pem,
        key_pem,
    };
    let (_, expires) = bundle.validity().map_err(|e| e.to_string())?;
    bundle.replace(tls_dir).map_err(|e| e.to_string())?;
    tracing::info!(serial = %issued.serial, until = %humantime::format_rfc3339_seconds(expires), "certificate renewed");
    Ok(expires)
}

/// Renews the certificate in `tls_dir` whenever it is due, until `stop`.
pub async fn run(bus: Bus, node: String, tls_dir: PathBuf, stop: CancellationToken) {
    loop {
        let (wait, expires) = match Bundle::load(&tls_dir).and_then(|b| b.validity()) {
            Ok((issued, expires)) => (renew_wait(issued, expires, SystemTime::now()), expires),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the certificate; checking again in a minute");
                (
                    Duration::from_secs(60),
                    SystemTime::now() + Duration::from_secs(240),
                )
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let renewed = tokio::select! {
            _ = stop.cancelled() => return,
            r = renew_once(&bus, &node, &tls_dir) => r,
        };
        if let Err(e) = renewed {
            let retry = retry_wait(expires, SystemTime::now());
            tracing::warn!(error = %e, ?retry, "certificate renewal failed; retrying");
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_after_two_thirds_of_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = t0 + Duration::from_secs(30 * 24 * 3600);
        assert_eq!(renew_wait(t0, end, t0), Duration::from_secs(20 * 24 * 3600));
        assert_eq!(
            renew_wait(t0, end, t0 + Duration::from_secs(25 * 24 * 3600)),
            Duration::ZERO
        );
        assert_eq!(retry_wait(end, end), Duration::from_secs(1));
        assert_eq!(retry_wait(end, t0), Duration::from_secs(60));
    }
}
