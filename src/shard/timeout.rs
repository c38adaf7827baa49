//! A deadline for any future on a shard's timer.

use std::future::Future;
use std::time::Duration;

use futures::future::{select, Either};

/// Runs `fut` for at most `limit`; `None` when time ran out.
pub async fn within<T>(limit: Duration, fut: impl Future<Output = T>) -> Option<T> {
    let timer = glommio::timer::sleep(limit);
    futures::pin_mut!(fut, timer);
    match select(fut, timer).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}
