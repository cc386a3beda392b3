//! Per-thread RVM instances.
//!
//! `RegoVM` is not `Clone` and holds per-execution state, so a VM cannot be shared between
//! concurrent evaluations. A global pool would put a lock on the hot path; instead each thread
//! keeps one warm VM per generation it has served recently. A reload makes the old generation's
//! VMs unreachable by serial; they are evicted when the slot is reused.

use std::cell::RefCell;
use std::sync::Arc;

use regorus::Value;
use regorus::rvm::{Program, RegoVM};

use super::Generation;

/// Generations a thread keeps VMs for: the current one plus a few older ones still finishing
/// connections, or several engines side by side (benchmarks, tests).
const SLOTS: usize = 4;

thread_local! {
    static VMS: RefCell<Vec<(u64, RegoVM)>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's VM for `generation`, creating it on first use.
pub(super) fn with_vm<R>(
    generation: &Generation,
    program: &Arc<Program>,
    f: impl FnOnce(&mut RegoVM) -> Result<R, String>,
) -> Result<R, String> {
    VMS.with(|cell| {
        // A re-entrant call (a policy evaluation inside a policy evaluation) cannot happen
        // through this crate; if the cell is busy anyway, use a throwaway VM rather than panic.
        let Ok(mut vms) = cell.try_borrow_mut() else {
            let mut vm = new_vm(generation, program)?;
            return f(&mut vm);
        };
        let index = match vms
            .iter()
            .position(|(serial, _)| *serial == generation.serial)
        {
            Some(index) => index,
            None => {
                let vm = new_vm(generation, program)?;
                if vms.len() >= SLOTS {
                    vms.remove(0);
                }
                vms.push((generation.serial, vm));
                vms.len() - 1
            }
        };
        f(&mut vms[index].1)
    })
}

fn new_vm(generation: &Generation, program: &Arc<Program>) -> Result<RegoVM, String> {
    let mut vm = RegoVM::new_with_policy(generation.compiled.clone());
    vm.load_program(program.clone());
    vm.set_data(generation.data.clone())
        .map_err(|e| format!("cannot load data into the policy VM: {e}"))?;
    vm.set_input(Value::Undefined);
    vm.set_execution_timer_config(Some(super::timer_config(generation.limits)));
    vm.set_max_instructions(generation.limits.max_instructions);
    Ok(vm)
}
