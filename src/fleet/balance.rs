//! Which cameras a worker should claim or hand over, from what the fleet's key-value buckets say:
//! the cameras, who holds each lease, and the live workers with their room. Pure, so the
//! balancing is tested by simulating a fleet.
//!
//! Every worker computes the same targets: the cameras spread as evenly as the workers' room
//! allows (water-filling: a level L, each worker's target the smaller of L and its room, L the
//! least level whose targets cover every camera, or every worker's room when there is less room
//! than cameras). A worker under its target claims cameras nobody holds; a worker over it hands
//! one camera back at a time, and only while another live worker is under its own target, so a
//! worker that joins or returns takes cameras over one by one and a balanced fleet never churns.

use std::collections::{BTreeMap, BTreeSet};

/// What a worker reads of the fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetView {
    /// Every camera configured.
    pub cameras: BTreeSet<String>,
    /// Camera → the worker holding its lease (a dead worker's until its lease expires).
    pub holders: BTreeMap<String, String>,
    /// Live workers → how many streams each may run (`--max-streams`).
    pub workers: BTreeMap<String, usize>,
}

/// What one worker should do now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Cameras to try to claim (each by creating its lease: another worker may win).
    pub claim: Vec<String>,
    /// A camera to hand over (stop it, then delete its lease).
    pub release: Option<String>,
}

/// Each live worker's fair share of the cameras.
pub fn targets(cameras: usize, workers: &BTreeMap<String, usize>) -> BTreeMap<String, usize> {
    let room: usize = workers.values().sum();
    let level = if room <= cameras {
        usize::MAX
    } else {
        // The least level whose targets cover the cameras; at most `cameras`.
        (0..=cameras)
            .find(|&l| workers.values().map(|&r| r.min(l)).sum::<usize>() >= cameras)
            .unwrap_or(cameras)
    };
    workers
        .iter()
        .map(|(w, &r)| (w.clone(), r.min(level)))
        .collect()
}

/// A camera's rank for `worker` (rendezvous hashing): workers prefer different cameras, so
/// their claims rarely collide, and each keeps the ones it ranks first when it hands over.
fn rank(camera: &str, worker: &str) -> u64 {
    let mut h = twox_hash::XxHash64::with_seed(0);
    std::hash::Hasher::write(&mut h, worker.as_bytes());
    std::hash::Hasher::write(&mut h, &[0]);
    std::hash::Hasher::write(&mut h, camera.as_bytes());
    std::hash::Hasher::finish(&h)
}

/// What `me` should do given `view`.
pub fn plan(me: &str, view: &FleetView) -> Plan {
    let Some(&my_room) = view.workers.get(me) else {
        return Plan::default();
    };
    let targets = targets(view.cameras.len(), &view.workers);
    let target = targets.get(me).copied().unwrap_or(0).min(my_room);
    let held_by = |w: &str| {
        view.holders
            .iter()
            .filter(|(c, h)| h.as_str() == w && view.cameras.contains(*c))
            .count()
    };
    let mine: Vec<&String> = view
        .holders
        .iter()
        .filter(|(c, h)| h.as_str() == me && view.cameras.contains(*c))
        .map(|(c, _)| c)
        .collect();
    let mut plan = Plan::default();
    if mine.len() < target {
        let mut free: Vec<&String> = view
            .cameras
            .iter()
            .filter(|c| !view.holders.contains_key(*c))
            .collect();
        free.sort_by_key(|c| std::cmp::Reverse(rank(c, me)));
        plan.claim = free
            .into_iter()
            .take(target - mine.len())
            .cloned()
            .collect();
    } else if mine.len() > target {
        let someone_has_room = targets.iter().any(|(w, &t)| w != me && held_by(w) < t);
        if someone_has_room {
            plan.release = mine.into_iter().min_by_key(|c| rank(c, me)).cloned();
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(list: &[(&str, usize)]) -> BTreeMap<String, usize> {
        list.iter().map(|(w, r)| (w.to_string(), *r)).collect()
    }

    #[test]
    fn targets_spread_the_cameras_as_evenly_as_the_room_allows() {
        let t = targets(6, &workers(&[("a", 8), ("b", 8), ("c", 8)]));
        assert_eq!(t.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
        let t = targets(7, &workers(&[("a", 8), ("b", 8), ("c", 8)]));
        assert_eq!(t.values().copied().collect::<Vec<_>>(), [3, 3, 3]);
        // A small worker takes what it can, the others the rest.
        let t = targets(7, &workers(&[("a", 1), ("b", 8), ("c", 8)]));
        assert_eq!(t.values().copied().collect::<Vec<_>>(), [1, 3, 3]);
        // Less room than cameras: every worker full.
        let t = targets(9, &workers(&[("a", 2), ("b", 3)]));
        assert_eq!(t.values().copied().collect::<Vec<_>>(), [2, 3]);
        assert!(targets(0, &workers(&[("a", 2)])).values().all(|&t| t == 0));
        assert!(targets(3, &BTreeMap::new()).is_empty());
    }

    /// A fleet simulated round by round: each live worker plans on what it reads, claims win
    /// only where nobody holds the camera (as creating a key does), and a dead worker's leases
    /// vanish after `expiry_rounds`.
    struct Sim {
        view: FleetView,
        dead: BTreeMap<String, usize>,
        expiry_rounds: usize,
    }

    impl Sim {
        fn new(cameras: usize, list: &[(&str, usize)]) -> Self {
            Self {
                view: FleetView {
                    cameras: (0..cameras).map(|i| format!("cam{i}")).collect(),
                    holders: BTreeMap::new(),
                    workers: workers(list),
                },
                dead: BTreeMap::new(),
                expiry_rounds: 3,
            }
        }

        /// One round; the number of leases that changed hands or were taken.
        fn round(&mut self) -> usize {
            let mut moves = 0;
            for (w, left) in self.dead.iter_mut() {
                if *left == 0 {
                    self.view.holders.retain(|_, h| h != w);
                } else {
                    *left -= 1;
                }
            }
            let names: Vec<String> = self.view.workers.keys().cloned().collect();
            for w in names {
                let p = plan(&w, &self.view);
                for c in p.claim {
                    if let std::collections::btree_map::Entry::Vacant(e) =
                        self.view.holders.entry(c)
                    {
                        e.insert(w.clone());
                        moves += 1;
                    }
                }
                if let Some(c) = p.release {
                    self.view.holders.remove(&c);
                    moves += 1;
                }
            }
            moves
        }

        /// Rounds until nothing moves and no dead worker's lease is left (at most 50).
        fn settle(&mut self) -> usize {
            (1..=50)
                .find(|_| {
                    self.round() == 0
                        && !self
                            .view
                            .holders
                            .values()
                            .any(|h| self.dead.contains_key(h))
                })
                .expect("the fleet settles")
        }

        fn counts(&self) -> Vec<usize> {
            self.view
                .workers
                .keys()
                .map(|w| self.view.holders.values().filter(|h| *h == w).count())
                .collect()
        }

        fn kill(&mut self, w: &str) {
            self.view.workers.remove(w);
            self.dead.insert(w.to_string(), self.expiry_rounds);
        }
    }

    #[test]
    fn six_cameras_on_three_workers_spread_two_each_and_follow_failures() {
        let mut sim = Sim::new(6, &[("a", 8), ("b", 8), ("c", 8)]);
        sim.settle();
        assert_eq!(sim.counts(), [2, 2, 2]);
        assert_eq!(sim.view.holders.len(), 6);
        // b dies: its cameras wait for their leases to expire, then go to a and c.
        sim.kill("b");
        sim.settle();
        assert_eq!(sim.counts(), [3, 3]);
        assert_eq!(sim.view.holders.len(), 6);
        // b comes back: a and c hand over one at a time until it is balanced again.
        sim.view.workers.insert("b".into(), 8);
        sim.dead.clear();
        let p = plan("a", &sim.view);
        assert!(p.claim.is_empty() && p.release.is_some(), "{p:?}");
        sim.settle();
        assert_eq!(sim.counts(), [2, 2, 2]);
        // Balanced: nobody moves.
        assert_eq!(sim.round(), 0);
    }

    #[test]
    fn room_caps_and_uneven_counts_settle_without_churn() {
        let mut sim = Sim::new(7, &[("a", 1), ("b", 8), ("c", 8)]);
        sim.settle();
        let counts = sim.counts();
        assert_eq!(counts[0], 1);
        assert_eq!(counts.iter().sum::<usize>(), 7);
        assert!(counts.iter().all(|&n| n <= 3), "{counts:?}");
        // Less room than cameras: every worker full, the rest wait, nobody hands over.
        let mut sim = Sim::new(9, &[("a", 2), ("b", 3)]);
        sim.settle();
        assert_eq!(sim.counts(), [2, 3]);
        assert_eq!(sim.round(), 0);
    }

    #[test]
    fn a_camera_removed_or_added_is_dropped_or_taken() {
        let mut sim = Sim::new(4, &[("a", 8), ("b", 8)]);
        sim.settle();
        assert_eq!(sim.counts(), [2, 2]);
        sim.view.cameras.insert("cam9".into());
        sim.settle();
        assert_eq!(sim.view.holders.len(), 5);
        // A worker not in the live list (its heartbeat lapsed) plans nothing.
        assert_eq!(plan("z", &sim.view), Plan::default());
    }

    #[test]
    fn many_cameras_on_many_workers_are_spread_within_one() {
        let list: Vec<(String, usize)> = (0..10).map(|i| (format!("w{i}"), 1000)).collect();
        let list: Vec<(&str, usize)> = list.iter().map(|(w, r)| (w.as_str(), *r)).collect();
        let mut sim = Sim::new(2000, &list);
        sim.settle();
        let counts = sim.counts();
        assert!(counts.iter().all(|&n| n == 200), "{counts:?}");
        sim.kill("w3");
        sim.settle();
        let counts = sim.counts();
        assert_eq!(counts.iter().sum::<usize>(), 2000);
        // The dead worker's 200 are taken by the others, none beyond its fair share (223).
        assert!(
            counts.iter().all(|&n| (200..=223).contains(&n)),
            "{counts:?}"
        );
    }
}
