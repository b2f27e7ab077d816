//! The leader's lease in the metadb: one row `odp_leader` (holder, token,
//! expires_at). Taken only when expired, with the token incremented;
//! renewed only by its token and only before it expires; times are the
//! metadb's (`NOW(6)`), so the coordinators' clocks never matter.
use std::time::Duration;

use mysql_async::{TxOpts, prelude::Queryable};

use super::{Fence, Metadb, StoreError};

/// The lease row as it is now.
#[derive(Debug, Clone)]
pub struct Leader {
    pub holder: String,
    pub token: i64,
    /// How long it still holds; None once expired.
    pub remaining: Option<Duration>,
}

fn micros(d: Duration) -> i64 {
    d.as_micros().min(i64::MAX as u128) as i64
}

impl Metadb {
    /// Takes the lease if it has expired: the new token, or None while
    /// another holds it.
    pub async fn acquire(
        &self,
        holder: &str,
        lease: Duration,
    ) -> Result<Option<Fence>, StoreError> {
        self.within("acquire", "lease", async {
            let mut conn = self.pool().get_conn().await?;
            let mut tx = conn.start_transaction(TxOpts::default()).await?;
            let row: Option<(i64, i64)> = tx
                .exec_first(
                    "SELECT token, expires_at < NOW(6) FROM odp_leader WHERE id = 1 FOR UPDATE",
                    (),
                )
                .await?;
            let Some((token, 1)) = row else {
                tx.rollback().await?;
                return Ok(None);
            };
            tx.exec_drop(
                "UPDATE odp_leader SET holder = ?, token = token + 1, \
                 expires_at = TIMESTAMPADD(MICROSECOND, ?, NOW(6)) WHERE id = 1",
                (holder, micros(lease)),
            )
            .await?;
            tx.commit().await?;
            Ok(Some(Fence(token + 1)))
        })
        .await
    }

    /// Extends the lease by `lease` from now; false if it is not ours or
    /// has already expired (then it must be taken anew, with a new token).
    pub async fn renew(&self, fence: Fence, lease: Duration) -> Result<bool, StoreError> {
        self.within("renew", "lease", async {
            let mut conn = self.pool().get_conn().await?;
            conn.exec_drop(
                "UPDATE odp_leader SET expires_at = TIMESTAMPADD(MICROSECOND, ?, NOW(6)) \
                 WHERE id = 1 AND token = ? AND expires_at >= NOW(6)",
                (micros(lease), fence.0),
            )
            .await?;
            Ok(conn.affected_rows() == 1)
        })
        .await
    }

    /// Gives the lease up (a clean stop), so another takes it at once.
    pub async fn release(&self, fence: Fence) -> Result<(), StoreError> {
        self.within("release", "lease", async {
            let mut conn = self.pool().get_conn().await?;
            conn.exec_drop(
                "UPDATE odp_leader SET expires_at = TIMESTAMPADD(MICROSECOND, -1, NOW(6)) \
                 WHERE id = 1 AND token = ?",
                (fence.0,),
            )
            .await
        })
        .await
    }

    pub async fn leader(&self) -> Result<Leader, StoreError> {
        let row: Option<(String, i64, i64)> = self
            .within("read", "lease", async {
                let mut conn = self.pool().get_conn().await?;
                conn.query_first(
                    "SELECT holder, token, TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at) \
                     FROM odp_leader WHERE id = 1",
                )
                .await
            })
            .await?;
        let (holder, token, left) = row.unwrap_or_default();
        Ok(Leader {
            holder,
            token,
            remaining: (left > 0).then(|| Duration::from_micros(left as u64)),
        })
    }
}
