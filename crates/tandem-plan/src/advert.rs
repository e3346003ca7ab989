//! Multi-hop rate advertisement: what rate a router tells a neighbour it can
//! bring to a download, counting what its own other neighbours bring.
//!
//! A router `X` asked by `asker` computes its advertisement from its own
//! uplink rate, the link rate to the asker and, for each of its other
//! neighbours `n`, the rate `n` advertised to `X` and the link rate `X–n`.
//! Applied at every hop (leaves advertise their own rate) it gives the
//! multi-hop figure.

use crate::rate::Rate;

/// How a router aggregates its neighbours' advertisements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdvertRule {
    /// The seed's rule: the average of the router's own rate and its
    /// neighbours' advertised rates (`(B + C + D) / 3`). Ignores link rates.
    Average,
    /// `min(link to the asker, own + sum over other neighbours of
    /// min(their advertisement, link to them))`: what can actually be pushed
    /// to the asker. The default (see docs/planner.md for the comparison).
    #[default]
    CappedSum,
}

impl AdvertRule {
    /// The configuration spelling: `capped-sum` or `average`.
    pub fn as_str(self) -> &'static str {
        match self {
            AdvertRule::Average => "average",
            AdvertRule::CappedSum => "capped-sum",
        }
    }
}

impl std::fmt::Display for AdvertRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown spelling of a setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {value:?} (expected one of: {expected})")]
pub struct UnknownSetting {
    /// What was given.
    pub value: String,
    /// What is accepted.
    pub expected: &'static str,
}

impl std::str::FromStr for AdvertRule {
    type Err = UnknownSetting;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "average" => Ok(AdvertRule::Average),
            "capped-sum" => Ok(AdvertRule::CappedSum),
            _ => Err(UnknownSetting {
                value: s.chars().take(64).collect(),
                expected: "capped-sum, average",
            }),
        }
    }
}

/// One neighbour's contribution as seen by the advertising router.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NeighbourRate {
    /// What the neighbour advertised to us.
    pub advertised: Rate,
    /// The rate of our link to it.
    pub link: Rate,
}

/// The rate to advertise to an asker.
///
/// `own` is this router's uplink rate, `link_to_asker` the link over which
/// the bytes would travel (`None` when there is no asker, e.g. the
/// initiator's own view), `others` the neighbours other than the asker that
/// this router would sub-delegate to.
pub fn advertise(
    rule: AdvertRule,
    own: Rate,
    link_to_asker: Option<Rate>,
    others: &[NeighbourRate],
) -> Rate {
    match rule {
        AdvertRule::Average => {
            let sum: Rate = others.iter().map(|n| n.advertised).sum();
            let n = others.len() as f64 + 1.0;
            Rate::from_bytes_per_sec((own + sum).bytes_per_sec() / n)
        }
        AdvertRule::CappedSum => {
            let sum: Rate = others.iter().map(|n| n.advertised.min(n.link)).sum();
            (own + sum).capped_by(link_to_asker)
        }
    }
}

/// A tree of routers below an asker, for computing advertisements bottom-up.
#[derive(Debug, Clone, PartialEq)]
pub struct AdvertTree {
    /// This router's uplink rate.
    pub own: Rate,
    /// Children: the rate of the link to each and its subtree.
    pub children: Vec<(Rate, AdvertTree)>,
}

impl AdvertTree {
    /// A router with no neighbours below it.
    pub fn leaf(own: Rate) -> Self {
        AdvertTree {
            own,
            children: Vec::new(),
        }
    }

    /// What this router advertises over a link of rate `link_to_asker`,
    /// applying `rule` at every level.
    pub fn advertise(&self, rule: AdvertRule, link_to_asker: Option<Rate>) -> Rate {
        let others: Vec<NeighbourRate> = self
            .children
            .iter()
            .map(|(link, child)| NeighbourRate {
                advertised: child.advertise(rule, Some(*link)),
                link: *link,
            })
            .collect();
        advertise(rule, self.own, link_to_asker, &others)
    }

    /// The rate this subtree can really deliver over `link_to_asker` when
    /// every router forwards everything its children bring (fluid model,
    /// each link independent): the capped sum, by construction.
    pub fn deliverable(&self, link_to_asker: Option<Rate>) -> Rate {
        let below: Rate = self
            .children
            .iter()
            .map(|(link, child)| child.deliverable(Some(*link)))
            .sum();
        (self.own + below).capped_by(link_to_asker)
    }

    /// Number of routers in the tree.
    pub fn size(&self) -> usize {
        1 + self.children.iter().map(|(_, c)| c.size()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mbit(x: f64) -> Rate {
        Rate::from_mbit(x)
    }

    fn close(a: Rate, b: Rate) -> bool {
        (a.bytes_per_sec() - b.bytes_per_sec()).abs() < 1e-6
    }

    #[test]
    fn seed_example_average() {
        // B has 2 Mbit/s and neighbours C, D with 10 Mbit/s each.
        let others = [
            NeighbourRate {
                advertised: mbit(10.0),
                link: mbit(54.0),
            },
            NeighbourRate {
                advertised: mbit(10.0),
                link: mbit(54.0),
            },
        ];
        let avg = advertise(AdvertRule::Average, mbit(2.0), Some(mbit(54.0)), &others);
        assert!(close(avg, mbit(22.0 / 3.0)));
        let cs = advertise(AdvertRule::CappedSum, mbit(2.0), Some(mbit(54.0)), &others);
        assert!(close(cs, mbit(22.0)));
        // A slow link to the asker caps the capped sum, not the average.
        let cs = advertise(AdvertRule::CappedSum, mbit(2.0), Some(mbit(6.0)), &others);
        assert!(close(cs, mbit(6.0)));
    }

    #[test]
    fn capped_sum_caps_each_neighbour_by_its_link() {
        let others = [NeighbourRate {
            advertised: mbit(50.0),
            link: mbit(5.0),
        }];
        let cs = advertise(AdvertRule::CappedSum, mbit(10.0), None, &others);
        assert!(close(cs, mbit(15.0)));
    }

    #[test]
    fn tree_capped_sum_equals_deliverable() {
        let c = AdvertTree::leaf(mbit(10.0));
        let d = AdvertTree::leaf(mbit(30.0));
        let b = AdvertTree {
            own: mbit(2.0),
            children: vec![(mbit(54.0), c), (mbit(20.0), d)],
        };
        assert!(close(
            b.advertise(AdvertRule::CappedSum, Some(mbit(25.0))),
            b.deliverable(Some(mbit(25.0)))
        ));
        assert!(close(b.deliverable(Some(mbit(25.0))), mbit(25.0)));
        assert!(close(b.deliverable(None), mbit(32.0)));
        // Average: (2 + 10 + 30) / 3 = 14, oblivious of links.
        assert!(close(
            b.advertise(AdvertRule::Average, Some(mbit(25.0))),
            mbit(14.0)
        ));
        assert_eq!(b.size(), 3);
    }

    #[test]
    fn settings_round_trip() {
        for r in [AdvertRule::Average, AdvertRule::CappedSum] {
            assert_eq!(r.to_string().parse::<AdvertRule>(), Ok(r));
        }
        assert!("sum".parse::<AdvertRule>().is_err());
        assert_eq!(AdvertRule::default(), AdvertRule::CappedSum);
    }

    #[test]
    fn garbage_advertisements_stay_finite() {
        let others = [NeighbourRate {
            advertised: Rate::from_bytes_per_sec(f64::NAN),
            link: mbit(1.0),
        }];
        for rule in [AdvertRule::Average, AdvertRule::CappedSum] {
            let r = advertise(rule, mbit(1.0), None, &others);
            assert!(r.bytes_per_sec().is_finite());
        }
    }
}
