//! Helpers for the devices' [`Snapshot`] implementations. A device made of parts
//! restores every part into a copy before it assigns any, so that a bad state changes
//! nothing; interrupt lines are re-driven only once the whole device is assigned.

use quern_core::snapshot::{Snapshot, State};
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Field `name` of an object state.
pub(crate) fn part<'a>(state: &'a State, name: &str) -> Result<&'a State, String> {
    state.get(name).ok_or_else(|| format!("no field '{name}'"))
}

/// A copy of `dev` with field `name` of `state` restored into it.
pub(crate) fn restored<T: Snapshot + Clone>(dev: &T, state: &State, name: &str) -> Result<T, String> {
    let mut copy = dev.clone();
    copy.restore_state(part(state, name)?).map_err(|e| format!("{name}: {e}"))?;
    Ok(copy)
}

/// The states of `parts`, as a list.
pub(crate) fn parts_state<T: Snapshot>(parts: &[T]) -> State {
    State::Array(parts.iter().map(Snapshot::save_state).collect())
}

/// Copies of `parts` restored from the list in field `name` of `state`, one entry each.
pub(crate) fn restored_parts<T: Snapshot + Clone, const N: usize>(
    parts: &[T; N],
    state: &State,
    name: &str,
) -> Result<[T; N], String> {
    let list = part(state, name)?
        .as_array()
        .filter(|l| l.len() == N)
        .ok_or_else(|| format!("field '{name}': not a list of {N}"))?;
    let mut out = parts.clone();
    for (i, (p, s)) in out.iter_mut().zip(list).enumerate() {
        p.restore_state(s).map_err(|e| format!("{name}[{i}]: {e}"))?;
    }
    Ok(out)
}

/// Field `name` of `state` as an array of exactly `N` entries.
pub(crate) fn array_field<T: DeserializeOwned, const N: usize>(state: &State, name: &str) -> Result<[T; N], String> {
    big_array::deserialize(part(state, name)?).map_err(|e| format!("field '{name}': {e}"))
}

/// serde for arrays longer than the 32 entries serde itself handles (`#[serde(with)]`):
/// a list, whose length is checked on the way back.
pub(crate) mod big_array {
    use super::*;

    pub fn serialize<S: Serializer, T: Serialize, const N: usize>(a: &[T; N], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(a)
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>, const N: usize>(
        d: D,
    ) -> Result<[T; N], D::Error> {
        let v = Vec::<T>::deserialize(d)?;
        let len = v.len();
        v.try_into().map_err(|_| D::Error::invalid_length(len, &format!("a list of {N}").as_str()))
    }
}
