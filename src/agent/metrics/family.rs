//! A metric family bound to its one label struct: label values reach prometheus only as that
//! struct gives them, in the order of its names, so no call site passes them positionally.

use std::marker::PhantomData;

use prometheus::core::{Atomic, GenericGaugeVec, MetricVec, MetricVecBuilder};
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// One family's label set: the label names and, in the same order, the values (`node` is the
/// registry's, on every series).
pub(super) trait Labels {
    /// The same labels with `'static` borrows: the type a [`Family`] is declared with, so a
    /// family takes label sets that borrow for any time.
    type Static: Labels + 'static;
    /// The label names, in the order [`Labels::values`] gives the values.
    const NAMES: &'static [&'static str];
    fn values(&self) -> Vec<&str>;
}

/// The label set of a family whose one series has no label but `node`.
pub(super) struct NoLabels;

impl Labels for NoLabels {
    type Static = NoLabels;
    const NAMES: &'static [&'static str] = &[];
    fn values(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// A registered family (`V`: a prometheus vec) whose series are addressed by `L` only.
pub(super) struct Family<V, L> {
    vec: V,
    labels: PhantomData<fn() -> L>,
}

impl<T: MetricVecBuilder + 'static, L: Labels> Family<MetricVec<T>, L> {
    /// Builds the family with `make` (e.g. `IntGaugeVec::new`) and registers it in `registry`.
    fn register(
        registry: &Registry,
        make: fn(Opts, &[&str]) -> prometheus::Result<MetricVec<T>>,
        name: &str,
        help: &str,
    ) -> prometheus::Result<Self> {
        let vec = make(Opts::new(name, help), L::NAMES)?;
        registry.register(Box::new(vec.clone()))?;
        Ok(Family {
            vec,
            labels: PhantomData,
        })
    }

    /// The series of `labels`, created when it does not exist.
    pub(super) fn with<M: Labels<Static = L>>(&self, labels: &M) -> T::M {
        self.vec.with_label_values(&labels.values())
    }

    /// Removes the series of `labels`; one that does not exist has nothing to remove.
    pub(super) fn remove<M: Labels<Static = L>>(&self, labels: &M) {
        let _ = self.vec.remove_label_values(&labels.values());
    }
}

impl<L: Labels> Family<IntGaugeVec, L> {
    /// An integer gauge family, registered.
    pub(super) fn gauge(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Self> {
        Self::register(registry, IntGaugeVec::new, name, help)
    }
}

impl<L: Labels> Family<GaugeVec, L> {
    /// A float gauge family (seconds, timestamps), registered.
    pub(super) fn float(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Self> {
        Self::register(registry, GaugeVec::new, name, help)
    }
}

impl<L: Labels> Family<IntCounterVec, L> {
    /// A counter family, registered.
    pub(super) fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Self> {
        Self::register(registry, IntCounterVec::new, name, help)
    }
}

impl<P: Atomic + 'static, L: Labels> Family<GenericGaugeVec<P>, L> {
    /// Sets the gauge to `value`; without one the series goes, so no stale value stays.
    pub(super) fn set_or_remove<M: Labels<Static = L>>(&self, labels: &M, value: Option<P::T>) {
        match value {
            Some(value) => self.with(labels).set(value),
            None => self.remove(labels),
        }
    }
}
