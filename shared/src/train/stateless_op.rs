//! `stateless_op!`: the tract trait impls every operator of fedge's own shares (its name, typed form, and an
//! evaluation with no per-session state), written once. An operator gives its name as a function of itself and its
//! evaluation as an inherent `run(&self, inputs)`; its inference rules and output facts stay its own.
//!
//! Glue only: nothing here computes or checks a value.

/// `stateless_op!(Type, name)`: `impl Op` and `impl EvalOp` for `Type`, whose `name` is a function or closure from
/// `&Type` to its `&'static str` operator name and whose `run(&self, TVec<TValue>)` evaluates it.
macro_rules! stateless_op {
    ($t:ty, $name:expr) => {
        impl Op for $t {
            fn name(&self) -> StaticName {
                ($name)(self).into()
            }

            fn as_typed(&self) -> Option<&dyn TypedOp> {
                Some(self)
            }
        }

        impl EvalOp for $t {
            fn is_stateless(&self) -> bool {
                true
            }

            fn eval(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                self.run(inputs)
            }

            fn state(&self, _session: &mut SessionState, _node_id: usize) -> TractResult<Option<Box<dyn OpState>>> {
                Ok(None)
            }
        }
    };
}

pub(crate) use stateless_op;
