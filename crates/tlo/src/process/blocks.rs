//! Launch blocks: rules refusing launches of the processes whose metadata matches, kept in
//! one orchestrator's memory or, persistent, in the store for every orchestrator on it.

use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use tlo_core::{Job, JobId, JobState};

use crate::tlo::Tlo;

/// The task of the jobs that hold persistent launch blocks (idle forever, never run).
pub const LAUNCH_BLOCK_TASK: &str = "tlo.launch_block";

/// A rule refusing launches of the processes whose metadata matches, until removed.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LaunchBlock {
    /// Identifies the block for [`Tlo::unblock_launches`]; a persistent block's is the id of
    /// the job that holds it.
    pub id: JobId,
    /// Metadata every key of which a process must match to be blocked (empty: all).
    pub filter: Map<String, Value>,
    /// Why, reported in [`ControlError::LaunchBlocked`](super::ControlError::LaunchBlocked).
    pub reason: String,
    /// Kept in the store: it survives restarts and holds for every process on the store.
    pub persistent: bool,
}

impl LaunchBlock {
    /// Reads a persistent block from the job that holds it.
    fn from_job(job: &Job) -> Option<LaunchBlock> {
        Some(LaunchBlock {
            id: job.id,
            filter: job.args.get("filter")?.as_object()?.clone(),
            reason: job.args.get("reason")?.as_str()?.to_owned(),
            persistent: true,
        })
    }
}

/// The in-memory launch blocks of one `Tlo` (stackable: any matching block refuses).
#[derive(Debug, Default)]
pub(crate) struct LaunchBlocks {
    blocks: Mutex<Vec<LaunchBlock>>,
}

impl LaunchBlocks {
    fn add(&self, filter: Map<String, Value>, reason: String) -> LaunchBlock {
        let block = LaunchBlock {
            id: JobId::new(),
            filter,
            reason,
            persistent: false,
        };
        self.blocks.lock().push(block.clone());
        block
    }

    fn remove(&self, id: JobId) -> bool {
        let mut blocks = self.blocks.lock();
        let before = blocks.len();
        blocks.retain(|block| block.id != id);
        blocks.len() != before
    }

    fn list(&self) -> Vec<LaunchBlock> {
        self.blocks.lock().clone()
    }
}

impl Tlo {
    /// Refuses launches of the processes whose metadata matches `filter` (every key equal;
    /// empty blocks all), until [`unblock_launches`](Tlo::unblock_launches). Blocks stack.
    /// The block lives in this `Tlo`'s memory; see
    /// [`block_launches_persistent`](Tlo::block_launches_persistent) for one every process on
    /// the store obeys.
    pub fn block_launches(
        &self,
        filter: Map<String, Value>,
        reason: impl Into<String>,
    ) -> LaunchBlock {
        self.launch_blocks().add(filter, reason.into())
    }

    /// Like [`block_launches`](Tlo::block_launches), but kept in the store (as an idle job of
    /// task [`LAUNCH_BLOCK_TASK`]): it survives restarts, and every `Tlo` on the same store,
    /// in any process, refuses the launches it matches until it is removed.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let tlo = tlo::Tlo::builder().build()?;
    /// let block = tlo
    ///     .block_launches_persistent(serde_json::Map::new(), "deploy in progress")
    ///     .await?;
    /// assert!(block.persistent);
    /// assert!(tlo.unblock_launches(block.id).await?);
    /// # Ok::<(), tlo::Error>(()) }).unwrap();
    /// ```
    pub async fn block_launches_persistent(
        &self,
        filter: Map<String, Value>,
        reason: impl Into<String>,
    ) -> tlo_core::Result<LaunchBlock> {
        let reason = reason.into();
        let mut job = tlo_core::NewJob::new(
            LAUNCH_BLOCK_TASK,
            serde_json::json!({ "filter": filter, "reason": reason }),
        );
        job.state = JobState::Idle;
        let id = job.id;
        self.engine().store.enqueue(vec![job]).await?;
        Ok(LaunchBlock {
            id,
            filter,
            reason,
            persistent: true,
        })
    }

    /// Removes a launch block, in memory or persistent; false when there was none with this
    /// id.
    pub async fn unblock_launches(&self, block: JobId) -> tlo_core::Result<bool> {
        if self.launch_blocks().remove(block) {
            return Ok(true);
        }
        let store = &self.engine().store;
        match store.get(block).await? {
            Some(job) if job.task == LAUNCH_BLOCK_TASK => Ok(store.delete(&[block]).await? > 0),
            _ => Ok(false),
        }
    }

    /// The launch blocks in force: this `Tlo`'s, then the persistent ones.
    pub async fn launch_blocks_in_force(&self) -> tlo_core::Result<Vec<LaunchBlock>> {
        let mut blocks = self.launch_blocks().list();
        let filter = tlo_core::JobFilter::default()
            .task(LAUNCH_BLOCK_TASK)
            .state(JobState::Idle);
        let stored = self.engine().store.list(&filter).await?;
        blocks.extend(stored.iter().filter_map(LaunchBlock::from_job));
        Ok(blocks)
    }

    fn launch_blocks(&self) -> &Arc<LaunchBlocks> {
        &self.engine().launch_blocks
    }
}
