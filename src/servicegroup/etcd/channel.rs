//! The channel under etcd-client: its own balanced channel, with every
//! endpoint given svckit's client HTTP/2 settings
//! ([`crate::wire::client_http2`]) on its way in.

use etcd_client::BalancedChannelBuilder;
use tokio::sync::mpsc;
use tonic::transport::channel::Change;

/// Builds etcd-client's balanced channel; see the module.
pub(super) struct Tuned;

impl BalancedChannelBuilder for Tuned {
    type Error = tonic::transport::Error;

    fn balanced_channel(
        self,
        buffer_size: usize,
    ) -> Result<
        (
            etcd_client::Channel,
            mpsc::Sender<Change<http::Uri, tonic::transport::Endpoint>>,
        ),
        Self::Error,
    > {
        let (channel, to_channel) = tonic::transport::Channel::balance_channel(buffer_size);
        let (updates, mut from_client) = mpsc::channel(buffer_size);
        // Ends when the client (which holds `updates`) is dropped.
        tokio::spawn(async move {
            while let Some(change) = from_client.recv().await {
                let change = match change {
                    Change::Insert(uri, endpoint) => {
                        Change::Insert(uri, crate::wire::client_http2(endpoint))
                    }
                    remove => remove,
                };
                if to_channel.send(change).await.is_err() {
                    return;
                }
            }
        });
        Ok((etcd_client::Channel::Tonic(channel), updates))
    }
}
