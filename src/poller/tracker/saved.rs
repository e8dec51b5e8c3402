//! Serde forms of the tracker's maps that JSON cannot key directly: maps with tuple keys as
//! lists of pairs, and label values (`&'static str`) by name, dropping names this version
//! does not know.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ANOMALIES;
use crate::kapso::ApiError;

/// A map as a list of `[key, value]` pairs.
pub mod pairs {
    use super::*;

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// The steps seen per workflow, as `[workflow, [[step, last seen], ...]]` lists.
pub mod steps_seen {
    use super::*;
    use crate::clock::Micros;
    use crate::state::StepKey;

    type Map = BTreeMap<Arc<str>, BTreeMap<StepKey, Micros>>;

    pub fn serialize<S: Serializer>(map: &Map, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            map.iter()
                .map(|(wf, steps)| (wf, steps.iter().collect::<Vec<_>>())),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        Ok(Vec::<(Arc<str>, Vec<(StepKey, Micros)>)>::deserialize(d)?
            .into_iter()
            .map(|(wf, steps)| (wf, steps.into_iter().collect()))
            .collect())
    }
}

fn known(kinds: &[&'static str], name: &str) -> Option<&'static str> {
    kinds.iter().find(|k| **k == name).copied()
}

/// `kapso_api_anomalies_total` by kind.
pub mod anomalies {
    use super::*;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<&'static str, u64>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<&'static str, u64>, D::Error> {
        let raw = BTreeMap::<String, u64>::deserialize(d)?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| Some((known(&ANOMALIES, &k)?, v)))
            .collect())
    }
}

/// `kapso_workflow_poll_errors_total` by workflow and kind.
pub mod workflow_errors {
    use super::*;

    type Map = BTreeMap<(Arc<str>, &'static str), u64>;

    pub fn serialize<S: Serializer>(map: &Map, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Map, D::Error> {
        let raw = Vec::<((Arc<str>, String), u64)>::deserialize(d)?;
        Ok(raw
            .into_iter()
            .filter_map(|((wf, kind), v)| Some(((wf, known(&ApiError::KINDS, &kind)?), v)))
            .collect())
    }
}
