//! What every node does around each local step, whichever driver runs it (a thread of the
//! in-process run, or a rank of a multi-process job): its stream of minibatches (the same order in
//! both drivers, fast-forwarded when a run resumes), the local step itself, and when a checkpoint
//! is due.

use std::ops::ControlFlow;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use swarm_core::{NodeStats, SwarmNode, Transport};

use crate::config::LrSchedule;
use crate::data::Split;
use crate::model::{batch, FlatModel};
use crate::TrainError;

/// The seed of node `node`'s minibatch order (the same in-process and multi-process).
pub(crate) fn batch_seed(seed: u64, node: usize) -> u64 {
    seed ^ (node as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// Whether the end of epoch `epoch` (counted from 1) of a run of `epochs` writes a checkpoint.
pub(crate) fn checkpoint_due(every: Option<usize>, epoch: usize, epochs: usize) -> bool {
    every.is_some_and(|k| epoch % k == 0 || epoch == epochs)
}

/// A node's stream of minibatches over its own shard, reshuffled at each pass.
pub(crate) struct Batches {
    order: Vec<usize>,
    cursor: usize,
    rng: StdRng,
}

impl Batches {
    pub(crate) fn new(shard: &[usize], seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut order = shard.to_vec();
        order.shuffle(&mut rng);
        Batches {
            order,
            cursor: 0,
            rng,
        }
    }

    pub(crate) fn next(&mut self, size: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            if self.cursor == self.order.len() {
                self.order.shuffle(&mut self.rng);
                self.cursor = 0;
            }
            let take = (size - out.len()).min(self.order.len() - self.cursor);
            out.extend_from_slice(&self.order[self.cursor..self.cursor + take]);
            self.cursor += take;
        }
        out
    }
}

/// What one node of an algorithm does around each gradient computation: SwarmSGD
/// ([`SwarmNode`]) and every baseline implement it, and both drivers run it through [`Stepper`].
pub(crate) trait NodeAlgo {
    /// Before each step and at the end of each epoch (e.g. fold the corrections in the inbox).
    fn at_boundary(&mut self, _model: &mut FlatModel) -> Result<(), TrainError> {
        Ok(())
    }
    /// At the end of each epoch, before the model is evaluated or checkpointed: by default the
    /// boundary work; SwarmSGD also waits for its interaction in flight.
    fn at_epoch_end(&mut self, model: &mut FlatModel) -> Result<(), TrainError> {
        self.at_boundary(model)
    }
    /// After each gradient computation: must apply the update with learning rate `lr`.
    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError>;
    /// Counters so far.
    fn stats(&self) -> NodeStats;
}

/// Runs `call` on the model's parameters; a model on a device gets them back only if the node
/// wrote them (most calls only publish).
fn node_call<T: Transport, R>(
    node: &mut SwarmNode<T>,
    model: &mut FlatModel,
    call: impl FnOnce(&mut SwarmNode<T>, &mut [f32]) -> R,
) -> R {
    let writes = node.model_writes();
    model.update_params(|p| {
        let r = call(node, p);
        (r, node.model_writes() != writes)
    })
}

impl<T: Transport> NodeAlgo for SwarmNode<T> {
    fn at_boundary(&mut self, model: &mut FlatModel) -> Result<(), TrainError> {
        node_call(self, model, |node, p| node.step_boundary(p))?;
        Ok(())
    }

    fn at_epoch_end(&mut self, model: &mut FlatModel) -> Result<(), TrainError> {
        // The epoch's model is whole: the interaction in flight has landed or been taken back.
        node_call(self, model, |node, p| {
            node.drain(p)?;
            node.step_boundary(p)
        })?;
        Ok(())
    }

    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        model.sgd_step(lr);
        node_call(self, model, |node, p| node.after_local_step(p))?;
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        SwarmNode::stats(self).clone()
    }
}

/// A boxed algorithm is an algorithm: drivers choose the algorithm at run time.
impl NodeAlgo for Box<dyn NodeAlgo + Send> {
    fn at_boundary(&mut self, model: &mut FlatModel) -> Result<(), TrainError> {
        (**self).at_boundary(model)
    }

    fn at_epoch_end(&mut self, model: &mut FlatModel) -> Result<(), TrainError> {
        (**self).at_epoch_end(model)
    }

    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        (**self).after_step(model, lr)
    }

    fn stats(&self) -> NodeStats {
        (**self).stats()
    }
}

/// Plain local SGD without any exchange (a node alone; the emulator's step-time measurement).
pub(crate) struct Alone;

impl NodeAlgo for Alone {
    fn after_step(&mut self, model: &mut FlatModel, lr: f64) -> Result<(), TrainError> {
        model.sgd_step(lr);
        Ok(())
    }

    fn stats(&self) -> NodeStats {
        NodeStats::default()
    }
}

/// The local steps one node took in an epoch, and their summed loss.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EpochTally {
    pub loss_sum: f64,
    pub steps: u64,
}

impl EpochTally {
    /// Mean minibatch loss (NaN when no step was taken).
    pub(crate) fn mean_loss(&self) -> f64 {
        if self.steps == 0 {
            f64::NAN
        } else {
            self.loss_sum / self.steps as f64
        }
    }
}

/// One node's local steps: its minibatches, its learning-rate schedule and its step counter.
pub(crate) struct Stepper<'a> {
    train: &'a Split,
    batches: Batches,
    batch_size: usize,
    lr: LrSchedule,
    /// Local steps taken since the start of the run (a resumed node counts those before).
    step: usize,
}

impl<'a> Stepper<'a> {
    /// Node `node` over `shard` of `train`, positioned at `start_step`: a resumed node draws the
    /// same minibatches the uninterrupted run would have drawn.
    pub(crate) fn new(
        train: &'a Split,
        shard: &[usize],
        (seed, node): (u64, usize),
        batch_size: usize,
        lr: LrSchedule,
        start_step: usize,
    ) -> Self {
        let mut batches = Batches::new(shard, batch_seed(seed, node));
        for _ in 0..start_step {
            batches.next(batch_size);
        }
        Stepper {
            train,
            batches,
            batch_size,
            lr,
            step: start_step,
        }
    }

    /// Local steps taken so far.
    pub(crate) fn steps(&self) -> usize {
        self.step
    }

    /// One local step of `algo`: its boundary work, the gradient of the next minibatch, then its
    /// update with this step's learning rate. Returns the minibatch's loss.
    pub(crate) fn step(
        &mut self,
        model: &mut FlatModel,
        algo: &mut (impl NodeAlgo + ?Sized),
    ) -> Result<f64, TrainError> {
        self.step_at(model, algo, self.step)
    }

    /// [`Stepper::step`] with the learning rate of step `schedule_step` of the schedule (an
    /// emulated asynchronous run follows the schedule by the steps of all nodes, not its own).
    pub(crate) fn step_at(
        &mut self,
        model: &mut FlatModel,
        algo: &mut (impl NodeAlgo + ?Sized),
        schedule_step: usize,
    ) -> Result<f64, TrainError> {
        algo.at_boundary(model)?;
        let (x, y) = batch(self.train, &self.batches.next(self.batch_size));
        let loss = model.backward(&x, &y);
        if !loss.is_finite() {
            return Err(TrainError::Node(format!(
                "loss became {loss}: lower the learning rate"
            )));
        }
        algo.after_step(model, self.lr.at(schedule_step))?;
        self.step += 1;
        Ok(loss)
    }

    /// One epoch of at most `steps` local steps of `algo`. After each step, `after_each` gets the
    /// model, the algorithm and the run's step count so far, and may end the epoch early
    /// (`Break`: the driver was asked to stop) or fail it.
    pub(crate) fn run_epoch<A: NodeAlgo>(
        &mut self,
        model: &mut FlatModel,
        algo: &mut A,
        steps: usize,
        mut after_each: impl FnMut(&mut FlatModel, &mut A, usize) -> Result<ControlFlow<()>, TrainError>,
    ) -> Result<EpochTally, TrainError> {
        let mut tally = EpochTally::default();
        for _ in 0..steps {
            tally.loss_sum += self.step(model, algo)?;
            tally.steps += 1;
            if after_each(model, algo, self.step)?.is_break() {
                break;
            }
        }
        Ok(tally)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::InputShape;
    use crate::model::ModelKind;
    use quant::IdentityCodec;
    use swarm_core::{InProcessFabric, Interaction, LocalSteps};
    use tch::{Device, Tensor};

    /// Two SwarmSGD nodes averaging pairwise after every step, their models on the host or staged
    /// through a host copy as a GPU model is (the CPU standing in for the device). Returns both
    /// final models and the interactions completed.
    fn two_nodes(staged: bool) -> (Vec<Vec<f32>>, u64) {
        let input = InputShape::image(1, 2, 3);
        let fabric = InProcessFabric::new(vec![vec![1], vec![0]], 4096).unwrap();
        let mut models: Vec<FlatModel> = (0..2)
            .map(|i| {
                let kind = ModelKind::Mlp { hidden: 4 };
                FlatModel::build(kind, input, 3, 11 + i, staged.then_some(Device::Cpu)).unwrap()
            })
            .collect();
        let mut nodes: Vec<_> = (0..2)
            .map(|i| {
                let dim = models[i].dim();
                let mut node = SwarmNode::new(
                    fabric.endpoint(i).unwrap(),
                    vec![1 - i],
                    dim,
                    Interaction::Pairwise,
                    LocalSteps::Fixed(1),
                    Box::new(IdentityCodec),
                    3,
                )
                .unwrap();
                models[i].with_params_mut(|p| node.publish(p)).unwrap();
                node
            })
            .collect();
        let x = Tensor::from_slice(&[
            0.5f32, -1.0, 2.0, 1.5, 0.0, -0.5, 1.0, 0.25, -2.0, 0.5, 1.0, 3.0,
        ])
        .view([2, 6]);
        let y = Tensor::from_slice(&[2i64, 0]);
        for _ in 0..6 {
            for (node, model) in nodes.iter_mut().zip(&mut models) {
                node.at_boundary(model).unwrap();
                model.backward(&x, &y);
                node.after_step(model, 0.2).unwrap();
            }
        }
        for (node, model) in nodes.iter_mut().zip(&mut models) {
            node.at_epoch_end(model).unwrap();
        }
        let interactions = nodes.iter().map(|n| n.stats().interactions).sum();
        (
            models.iter_mut().map(|m| m.params()).collect(),
            interactions,
        )
    }

    #[test]
    fn a_staged_model_gets_every_average_and_correction_back_to_its_device() {
        let (host, n_host) = two_nodes(false);
        let (staged, n_staged) = two_nodes(true);
        assert!(n_host >= 8, "only {n_host} interactions");
        assert_eq!(n_host, n_staged);
        for (a, b) in host.iter().zip(&staged) {
            for (k, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() <= 1e-5, "parameter {k}: host {x}, staged {y}");
            }
        }
        // The last interaction averaged the two (different) models and its correction was folded:
        // both devices hold the same model.
        assert_eq!(staged[0], staged[1]);
    }

    #[test]
    fn a_fast_forwarded_stream_continues_where_the_full_one_is() {
        let shard: Vec<usize> = (0..50).collect();
        let mut full = Batches::new(&shard, batch_seed(3, 1));
        let drawn: Vec<Vec<usize>> = (0..40).map(|_| full.next(8)).collect();
        let mut resumed = Batches::new(&shard, batch_seed(3, 1));
        for _ in 0..25 {
            resumed.next(8);
        }
        assert_eq!(resumed.next(8), drawn[25]);
        // Every pass covers the shard once, whatever its split into minibatches.
        let mut seen: Vec<usize> = drawn.concat()[..50].to_vec();
        seen.sort_unstable();
        assert_eq!(seen, shard);
    }

    #[test]
    fn checkpoints_fall_every_k_epochs_and_at_the_end() {
        let due: Vec<usize> = (1..=7).filter(|&e| checkpoint_due(Some(3), e, 7)).collect();
        assert_eq!(due, vec![3, 6, 7]);
        assert!(!(1..=7).any(|e| checkpoint_due(None, e, 7)));
    }
}
