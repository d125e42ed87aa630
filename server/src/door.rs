//! A door to a shared service that shutdown can close: the HTTP router's
//! state lives to the very end, so anything it holds directly (ingest and
//! the writer's queue, the device edge) would be kept alive past the point
//! where shutdown needs it gone.

use std::sync::{Arc, RwLock};

/// A clonable handle to `T` until [`Door::close`]; afterwards it yields
/// nothing, and `T` is dropped once the last borrower lets go.
pub struct Door<T>(Arc<RwLock<Option<Arc<T>>>>);

impl<T> Door<T> {
    pub fn open(inner: Arc<T>) -> Self {
        Self(Arc::new(RwLock::new(Some(inner))))
    }

    /// The service, unless the door is closed.
    pub fn get(&self) -> Option<Arc<T>> {
        self.0.read().ok().and_then(|inner| inner.clone())
    }

    pub fn close(&self) {
        if let Ok(mut inner) = self.0.write() {
            *inner = None;
        }
    }
}

impl<T> Clone for Door<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::fmt::Debug for Door<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Door")
            .field("open", &self.get().is_some())
            .finish()
    }
}
