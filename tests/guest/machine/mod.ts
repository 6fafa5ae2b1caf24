/**
 * Test machine: where guest tests run. `decideMachineMode` picks `direct` (this host's /dev/kvm
 * runs a stock 64-bit guest), `nested` (a QEMU TCG machine with nested SVM whose /dev/kvm does)
 * or `skip`; `runInTestMachine` boots the nested machine over the host's read-only root and runs
 * one command in it. `run_in_machine.ts` is the command-line form.
 * @module
 */
export * from "./detect.ts";
export * from "./test_machine.ts";
