//! The configured apps, looked up by key (WebSocket path) or id (HTTP API).
//! Built once at start-up and shared read-only by every shard.

use std::{collections::HashMap, sync::Arc};

use super::AppIdx;
use crate::config::AppConfig;

/// Every app of this instance.
#[derive(Debug, Default)]
pub struct Apps {
    list: Vec<Arc<AppConfig>>,
    by_key: HashMap<String, AppIdx>,
    by_id: HashMap<String, AppIdx>,
}

impl Apps {
    /// Indexes the apps; keys and ids are unique after config validation.
    pub fn new(list: Vec<Arc<AppConfig>>) -> Self {
        let by_key = list.iter().enumerate().map(|(i, a)| (a.key.clone(), i as AppIdx)).collect();
        let by_id = list.iter().enumerate().map(|(i, a)| (a.id.clone(), i as AppIdx)).collect();
        Self { list, by_key, by_id }
    }

    /// The app with this public key.
    pub fn by_key(&self, key: &str) -> Option<AppIdx> {
        self.by_key.get(key).copied()
    }

    /// The app with this id.
    pub fn by_id(&self, id: &str) -> Option<AppIdx> {
        self.by_id.get(id).copied()
    }

    /// The app at `idx`.
    ///
    /// # Panics
    /// If `idx` did not come from this registry.
    pub fn get(&self, idx: AppIdx) -> &Arc<AppConfig> {
        &self.list[idx as usize]
    }

    /// Number of apps.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// True when there is no app (never, after validation).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
