//! # Exit codes: one mapping from an error chain to the code the README documents

use crate::policy::BudgetExceeded;
use crate::publish::preflight::PreflightFailed;
use crate::publish::session::CloudError;
use crate::registry::RegistryError;
use crate::support::error::{BadInput, ChecksumMismatch, Damaged, Located, exit};

/// Picks the exit code for an error chain: the first typed cause decides.
pub fn code(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.is::<Located>() || cause.is::<BadInput>() {
            return exit::BAD_INPUT;
        }
        if cause.is::<ChecksumMismatch>() {
            return exit::CHECKSUM;
        }
        if cause.is::<Damaged>() {
            return exit::DAMAGED;
        }
        if cause.is::<BudgetExceeded>() {
            return exit::BUDGET;
        }
        if cause.is::<PreflightFailed>() {
            return exit::PREFLIGHT;
        }
        if let Some(e) = cause.downcast_ref::<RegistryError>()
            && e.refused()
        {
            return exit::CLOUD_REFUSED;
        }
        if let Some(e) = cause.downcast_ref::<crate::publish::docker::ContainerExit>() {
            // The command's own code (1..=255); a signal's 128+n passes through too.
            return u8::try_from(e.code)
                .ok()
                .filter(|c| *c != 0)
                .unwrap_or(exit::FAILURE);
        }
        if let Some(CloudError::Status { status, .. }) = cause.downcast_ref::<CloudError>()
            && matches!(status, 400 | 401 | 403 | 413 | 415)
        {
            return exit::CLOUD_REFUSED;
        }
    }
    exit::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_first_typed_cause_decides() {
        let e: anyhow::Error = BadInput("x".into()).into();
        assert_eq!(code(&e.context("while building")), exit::BAD_INPUT);
        let e: anyhow::Error = ChecksumMismatch {
            what: "base tarball".into(),
            algorithm: "sha256",
            expected: "a".into(),
            found: "b".into(),
        }
        .into();
        assert_eq!(code(&e), exit::CHECKSUM);
        assert_eq!(code(&Damaged(vec!["blob".into()]).into()), exit::DAMAGED);
        let refused = |status| -> anyhow::Error {
            RegistryError::Status {
                method: "PUT".into(),
                url: "http://r/v2/x/manifests/t".into(),
                status,
                code: String::new(),
                message: String::new(),
                hint: String::new(),
            }
            .into()
        };
        assert_eq!(code(&refused(401)), exit::CLOUD_REFUSED);
        assert_eq!(code(&refused(415)), exit::CLOUD_REFUSED);
        assert_eq!(code(&refused(503)), exit::FAILURE);
        let unreachable: anyhow::Error = RegistryError::Unreachable {
            url: "http://r/v2/".into(),
            reason: "refused".into(),
        }
        .into();
        assert_eq!(code(&unreachable.context("pushing")), exit::FAILURE);
        let r: anyhow::Result<()> = Err(std::io::Error::other("disk full").into());
        assert_eq!(code(&r.context("writing").unwrap_err()), exit::FAILURE);
    }
}
