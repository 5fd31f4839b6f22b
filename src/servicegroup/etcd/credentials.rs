//! etcd user/password authentication: the credentials of a driver, and
//! logging in again when etcd refuses the login after a password rotation.

use super::Inner;
use crate::error::{Error, Result};
use crate::servicegroup::RegistryOptions;

/// etcd user and password. The password is never logged or shown: it is
/// read from its file when needed and handed to the client alone.
#[derive(Clone)]
pub(super) struct Credentials {
    pub(super) user: String,
    password: Option<String>,
    pub(super) password_file: Option<std::path::PathBuf>,
}

impl Credentials {
    pub(super) fn of(options: &RegistryOptions) -> Result<Option<Self>> {
        match (&options.user, &options.password, &options.password_file) {
            (None, None, None) => Ok(None),
            (Some(user), password, file) if password.is_some() != file.is_some() => {
                Ok(Some(Credentials {
                    user: user.clone(),
                    password: password.clone(),
                    password_file: file.clone(),
                }))
            }
            _ => Err(Error::config(
                "etcd authentication needs registry_user and one of registry_password_file or registry_password",
            )),
        }
    }

    /// The password as it is now: the file is read each time.
    pub(super) fn password(&self) -> Result<String> {
        if let Some(password) = &self.password {
            return Ok(password.clone());
        }
        let Some(path) = &self.password_file else {
            return Ok(String::new());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!(
                "cannot read registry_password_file {}: {e}",
                path.display()
            ))
        })?;
        Ok(text.trim_end_matches(['\n', '\r']).to_string())
    }

    /// etcd refused the user name or password (exit 78): the message names
    /// the user, never the password.
    pub(super) fn refused(&self, endpoints: &str, source: etcd_client::Error) -> Error {
        Error::credentials(
            format!(
                "etcd at {endpoints} refused user {:?}: wrong user name or password (registry_user, {})",
                self.user,
                if self.password_file.is_some() {
                    "registry_password_file"
                } else {
                    "registry_password"
                }
            ),
            source,
        )
    }
}

/// Whether etcd refused to authenticate (a wrong user or password), as
/// opposed to not answering.
pub(super) fn is_refused_login(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        if matches!(s.code(), tonic::Code::InvalidArgument | tonic::Code::Unauthenticated))
}

impl Inner {
    /// Logs in with the password file as it is now, after etcd refused the
    /// login: the password was rotated. True when that worked, so the
    /// request is worth sending again.
    pub(super) async fn log_in_again(&self) -> bool {
        let Some(credentials) = self
            .credentials
            .as_ref()
            .filter(|c| c.password_file.is_some())
        else {
            return false;
        };
        let password = match credentials.password() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "etcd refused the login and the password file cannot be read");
                return false;
            }
        };
        let mut client = self.client.clone();
        match client
            .update_user(Some((credentials.user.clone(), password)))
            .await
        {
            Ok(()) => {
                tracing::info!(user = %credentials.user, "logged in to etcd again with the password file's new content");
                true
            }
            Err(e) => {
                tracing::warn!(user = %credentials.user, error = %e, "etcd refused the login with the password file's content");
                false
            }
        }
    }
}
