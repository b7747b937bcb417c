//! One load-balancing decision, as a pure function of what the container holds
//! ([`plan`]): which ownerships to renew, which partitions to claim, whom to steal from.
//!
//! The rule every Azure SDK shares (reference notes §2: Python `ownership_manager.py`
//! `_balance_ownership`, .NET `PartitionLoadBalancer.cs` @02c98f3d, Go
//! `processor_load_balancer.go` @1ab692d2): with `n` partitions and `k` active owners
//! (this one included), `min = n / k` and `max = min + 1` when `k` does not divide `n`.
//!
//! 1. Renew every ownership this owner holds (its ETag is the condition).
//! 2. Below `max`, claim partitions nobody holds: never owned, released (empty owner id,
//!    which Python and .NET treat as unowned) or expired (Last-Modified older than the
//!    expiration, by the service's clock). [`Strategy::Greedy`] claims up to the deficit at
//!    once, [`Strategy::Balanced`] one per cycle; which ones is random, so claimants racing
//!    for the same blob rarely collide.
//! 3. With nothing to claim, steal one partition per cycle from the owner with the most:
//!    below `min`, from one holding at least `max`; at `min` while every owner has its
//!    minimum, from one holding more than `max` (.NET's rule: "claim when owned < min, or
//!    when owned == min and no owner is below min").

use std::collections::BTreeMap;

use rand::seq::{IndexedRandom as _, SliceRandom as _};

use crate::checkpoint::blob::Ownership;

/// How fast unowned partitions are claimed.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Claim every unowned or expired partition this collector may hold in one cycle (a
    /// dead collector's partitions are read again after one cycle, not one per cycle);
    /// steal at most one per cycle. Python's greedy rule.
    #[default]
    Greedy,
    /// Claim or steal one partition per cycle (Go's and .NET's balanced).
    Balanced,
}

/// A claim to attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Partition id.
    pub partition: String,
    /// The ETag to claim against (`None`: the blob does not exist yet).
    pub etag: Option<String>,
    /// The active owner it is taken from, for a steal.
    pub from: Option<String>,
}

/// What one cycle does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// `(partition, etag)` of every ownership this owner holds.
    pub renew: Vec<(String, String)>,
    /// New claims (steals included).
    pub claim: Vec<Claim>,
    /// Active owners, this one included.
    pub owners: usize,
}

/// What the container says, and who is asking.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The hub's partition ids.
    pub partitions: &'a [String],
    /// The ownership blobs.
    pub ownerships: &'a [Ownership],
    /// The service's clock when they were listed, ms.
    pub server_time_ms: i64,
    /// Ownership expiration, ms.
    pub expiration_ms: i64,
    /// This owner's id.
    pub me: &'a str,
}

impl View<'_> {
    fn is_active(&self, o: &Ownership) -> bool {
        !o.owner_id.is_empty() && self.server_time_ms - o.last_modified_ms < self.expiration_ms
    }
}

/// The cycle's plan (see the module docs).
pub fn plan(view: &View<'_>, strategy: Strategy, rng: &mut impl rand::Rng) -> Plan {
    let known: BTreeMap<&str, &Ownership> = view
        .ownerships
        .iter()
        .filter(|o| view.partitions.contains(&o.partition))
        .map(|o| (o.partition.as_str(), o))
        .collect();
    let renew: Vec<(String, String)> = known
        .values()
        .filter(|o| o.owner_id == view.me)
        .map(|o| (o.partition.clone(), o.etag.clone()))
        .collect();
    let mut by_owner: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for o in known
        .values()
        .filter(|o| view.is_active(o) && o.owner_id != view.me)
    {
        by_owner.entry(&o.owner_id).or_default().push(&o.partition);
    }
    let owners = by_owner.len() + 1;
    let n = view.partitions.len();
    let min = n / owners;
    let max = min + usize::from(!n.is_multiple_of(owners));
    let own = renew.len();
    let mut claimable: Vec<Claim> = view
        .partitions
        .iter()
        .filter(|p| match known.get(p.as_str()) {
            None => true,
            Some(o) => o.owner_id != view.me && !view.is_active(o),
        })
        .map(|p| Claim {
            partition: p.clone(),
            etag: known.get(p.as_str()).map(|o| o.etag.clone()),
            from: None,
        })
        .collect();
    let mut claim = Vec::new();
    if own < max && !claimable.is_empty() {
        claimable.shuffle(rng);
        let count = match strategy {
            Strategy::Greedy => max - own,
            Strategy::Balanced => 1,
        };
        claim.extend(claimable.into_iter().take(count));
    } else if own < min {
        claim.extend(steal(&by_owner, &known, max, rng));
    } else if own == min && by_owner.values().all(|v| v.len() >= min) {
        // Everyone has their minimum but someone holds more than the maximum (it had the
        // partitions before the others came): take one of those.
        claim.extend(steal(&by_owner, &known, max + 1, rng));
    }
    Plan {
        renew,
        claim,
        owners,
    }
}

/// One partition of the owner with the most, if it holds at least `at_least`.
fn steal(
    by_owner: &BTreeMap<&str, Vec<&str>>,
    known: &BTreeMap<&str, &Ownership>,
    at_least: usize,
    rng: &mut impl rand::Rng,
) -> Option<Claim> {
    let (owner, parts) = by_owner
        .iter()
        .filter(|(_, parts)| parts.len() >= at_least.max(1))
        .max_by_key(|(_, parts)| parts.len())?;
    let partition = *parts.choose(rng)?;
    Some(Claim {
        partition: partition.to_owned(),
        etag: known.get(partition).map(|o| o.etag.clone()),
        from: Some((*owner).to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;

    fn own(p: usize, owner: &str, age_ms: i64) -> Ownership {
        Ownership {
            partition: p.to_string(),
            owner_id: owner.into(),
            etag: format!("\"e{p}\""),
            last_modified_ms: 100_000 - age_ms,
        }
    }

    fn parts(n: usize) -> Vec<String> {
        (0..n).map(|p| p.to_string()).collect()
    }

    fn plan_for(me: &str, all: &[Ownership], n: usize, strategy: Strategy) -> Plan {
        let partitions = parts(n);
        let view = View {
            partitions: &partitions,
            ownerships: all,
            server_time_ms: 100_000,
            expiration_ms: 60_000,
            me,
        };
        plan(&view, strategy, &mut rand::rngs::StdRng::seed_from_u64(7))
    }

    /// Applies every claim of each owner in turn, cycle after cycle, as the container would
    /// (a claim wins if the ETag still matches), and returns the counts per owner.
    fn settle(owners: &[&str], n: usize, strategy: Strategy, cycles: usize) -> Vec<usize> {
        let mut all: Vec<Ownership> = Vec::new();
        for _ in 0..cycles {
            for me in owners {
                let p = plan_for(me, &all, n, strategy);
                for c in p.claim {
                    let current = all.iter().find(|o| o.partition == c.partition);
                    if current.map(|o| o.etag.clone()) == c.etag {
                        all.retain(|o| o.partition != c.partition);
                        let mut o = own(c.partition.parse().unwrap(), me, 0);
                        o.etag = format!("\"{me}{}\"", c.partition);
                        all.push(o);
                    }
                }
            }
        }
        owners
            .iter()
            .map(|me| all.iter().filter(|o| o.owner_id == *me).count())
            .collect()
    }

    #[test]
    fn three_owners_settle_on_three_three_two() {
        for strategy in [Strategy::Greedy, Strategy::Balanced] {
            let mut counts = settle(&["a", "b", "c"], 8, strategy, 12);
            counts.sort();
            assert_eq!(counts, vec![2, 3, 3], "{strategy:?}");
        }
        // Greedy: one cycle each from nothing.
        let mut counts = settle(&["a", "b", "c"], 8, Strategy::Greedy, 1);
        counts.sort();
        assert_eq!(counts.iter().sum::<usize>(), 8, "{counts:?}");
    }

    #[test]
    fn expired_and_released_partitions_are_claimed_before_anything_is_stolen() {
        // c died (expired) with 0,1,2; a holds 3,4,5 and b holds 6,7.
        let all = vec![
            own(0, "c", 70_000),
            own(1, "c", 70_000),
            own(2, "", 1_000),
            own(3, "a", 1_000),
            own(4, "a", 1_000),
            own(5, "a", 1_000),
            own(6, "b", 1_000),
            own(7, "b", 1_000),
        ];
        let p = plan_for("b", &all, 8, Strategy::Greedy);
        assert_eq!(p.owners, 2);
        assert_eq!(p.renew.len(), 2);
        assert_eq!(p.claim.len(), 2, "up to max 4 at once: {p:?}");
        assert!(p.claim.iter().all(|c| c.from.is_none() && c.etag.is_some()));
        let p = plan_for("b", &all, 8, Strategy::Balanced);
        assert_eq!(p.claim.len(), 1);
    }

    #[test]
    fn a_new_owner_steals_one_partition_from_the_owner_with_most() {
        let all: Vec<Ownership> = (0..8)
            .map(|p| own(p, if p < 6 { "a" } else { "b" }, 0))
            .collect();
        let p = plan_for("c", &all, 8, Strategy::Greedy);
        assert_eq!(p.claim.len(), 1);
        assert_eq!(p.claim[0].from.as_deref(), Some("a"));
        // Above max already: nothing to claim, only renewals.
        let p = plan_for("a", &all, 8, Strategy::Greedy);
        assert!(p.claim.is_empty(), "{p:?}");
        assert_eq!(p.renew.len(), 6);
    }
}
