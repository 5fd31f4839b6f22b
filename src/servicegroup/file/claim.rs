//! Claiming an identity in the file registry: at once when free or ours,
//! over an owner found dead, never over a live one.

use std::time::SystemTime;

use super::store::Alive;
use super::{register, Claim, FileDriver};
use crate::error::{Error, Result};
use crate::servicegroup::probe::{probe, Holder};
use crate::servicegroup::Registration;

impl FileDriver {
    /// Registers, taking the identity over from an owner whose heartbeat is
    /// fresh but who does not answer SERVING (crashed within its down time).
    pub(super) async fn claim(&self, registration: &Registration, alive: &Alive) -> Result<()> {
        let mut replace = None;
        // Twice at most: a holder found dead is replaced on the next try,
        // unless yet another owner came in between.
        for _ in 0..3 {
            let (reg, a) = (registration.clone(), alive.clone());
            let claim = self
                .blocking(move |store| register(store, &reg, &a, replace))
                .await?;
            let Claim::Held { holder, url } = claim else {
                return Ok(());
            };
            let own = registration.advert.endpoints.grpc.as_deref();
            if probe(url.as_deref(), own).await != Holder::Dead {
                let at = url.map_or_else(
                    || "no endpoint advertised".into(),
                    |u| format!("serving at {u}"),
                );
                return Err(Error::duplicate(
                    &format!("{}/{}", registration.advert.topic, registration.advert.host),
                    &format!(
                        "{at}; pid {}, last heartbeat {:.1}s ago",
                        holder.pid,
                        holder.age(SystemTime::now()).as_secs_f64()
                    ),
                ));
            }
            tracing::warn!(
                topic = %registration.advert.topic,
                host = %registration.advert.host,
                holder = url.as_deref().unwrap_or("-"),
                pid = holder.pid,
                "the node holding this identity does not answer; taking it over"
            );
            replace = Some(holder.token);
        }
        Err(Error::registry_msg(format!(
            "{}/{} kept changing owners; registration not applied",
            registration.advert.topic, registration.advert.host
        )))
    }
}
