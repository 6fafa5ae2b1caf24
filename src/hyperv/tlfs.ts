/**
 * Hyper-V Top-Level Functional Specification (TLFS) numbers and wire structs: CPUID leaves and
 * bits, synthetic MSR indices, hypercall codes and status values, SynIC message layouts. No logic
 * lives here (protocol apart from device): every other file in `src/hyperv` reads its constants
 * from this one.
 *
 * Sources: TLFS 6.0b (MicrosoftDocs/Virtualization-Documentation `tlfs/`), cross-checked with
 * Linux `include/asm-generic/hyperv-tlfs.h` and `arch/x86/include/asm/hyperv-tlfs.h`.
 * @module
 */
import { defineLayout } from "../util/layout.ts";

// --- Hypercall trampoline ---

/**
 * I/O port the hypercall page writes to so that a hypercall reaches the VMM.
 *
 * The page holds `endbr64; out 0xE3, al; ret`. A `vmcall` would be consumed by KVM itself (it
 * implements its own hypercall ABI), whereas an `out` to a port no in-kernel device claims exits
 * to user space with every register intact, and the same bytes work for 32-bit and 64-bit
 * callers. The port must be one nothing on a PC uses: 0x80 is the POST/IO-delay port Linux and
 * firmware write constantly; the legacy PC/AT map reserves 0xE0-0xEF, whose only known users
 * are 0xE9 (Bochs/QEMU/Xen debug console), 0xEB and 0xED (I/O delay ports of some BIOSes and of
 * Linux `io_delay=0xed`) and 0xEE/0xEF (fast A20 / fast reset on some chipsets). 0xE3 has no
 * known user and fits the `out imm8, al` form.
 */
export const HV_HYPERCALL_PORT = 0xe3;

/**
 * Bytes of the hypercall page: `endbr64` (F3 0F 1E FA, a NOP without CET; lets an IBT-enabled
 * Linux keep IBT on, see arch/x86/hyperv/hv_init.c), `out HV_HYPERCALL_PORT, al` (E6 ib), `ret`
 * (C3). `out` changes no register and no flag; the VMM writes the result into RAX (or EDX:EAX)
 * before the guest resumes at the `ret`.
 */
export const HYPERCALL_PAGE_CODE: readonly number[] = [
  0xf3,
  0x0f,
  0x1e,
  0xfa,
  0xe6,
  HV_HYPERCALL_PORT,
  0xc3,
];

/**
 * Connection ids whose fast HvSignalEvent the long-mode hypercall page turns into a plain
 * `out dx, eax` to the I/O port of the same number (VMBus gives its channels 0x2001-0x27FF).
 * The VMM can bind those ports to eventfds (KVM_IOEVENTFD), so a channel doorbell is completed
 * inside KVM without an exit to user space, as QEMU's virtio notifications are; a port without
 * an eventfd exits to user space like any hypercall. Nothing on a PC decodes these ports.
 */
export const HV_DOORBELL_FIRST = 0x2001;
/** Last connection id (and I/O port) of the doorbell range. */
export const HV_DOORBELL_LAST = 0x27ff;

/** HvSignalEvent with the fast bit and no rep count: the control value the fast path matches. */
const FAST_SIGNAL_EVENT_CONTROL = 0x1005d;

/**
 * The hypercall page for a partition whose hypercall page is enabled from long mode, when
 * HvSignalEvent is offered: a fast HvSignalEvent (RCX = 0x1005D) to a connection id in the
 * doorbell range with flag number 0 (RDX = the id) returns SUCCESS through `out dx, eax` with
 * EAX = 0, which KVM completes in the kernel when an ioeventfd is bound to that port. Every
 * other call takes the plain path. Only RAX (the result register) and the flags change, as with
 * any hypercall. 32-bit callers get `HYPERCALL_PAGE_CODE` (these bytes decode differently there).
 *
 * ```
 *  0: f3 0f 1e fa              endbr64
 *  4: 48 81 f9 5d 00 01 00     cmp  rcx, 0x1005d
 * 11: 75 13                    jne  plain
 * 13: 48 8d 82 ff df ff ff     lea  rax, [rdx - 0x2001]      ; rdx < 0x2001 wraps: too big
 * 20: 48 3d fe 07 00 00        cmp  rax, 0x7fe
 * 26: 77 04                    ja   plain
 * 28: 31 c0                    xor  eax, eax                 ; HV_STATUS_SUCCESS
 * 30: ef                       out  dx, eax                  ; the doorbell
 * 31: c3                       ret
 * 32: e6 e3                    plain: out 0xe3, al
 * 34: c3                       ret
 * ```
 */
export const HYPERCALL_PAGE_CODE_LONG_MODE: readonly number[] = [
  ...[0xf3, 0x0f, 0x1e, 0xfa],
  ...[0x48, 0x81, 0xf9, ...le32(FAST_SIGNAL_EVENT_CONTROL)],
  ...[0x75, 0x13],
  ...[0x48, 0x8d, 0x82, ...le32(-HV_DOORBELL_FIRST)],
  ...[0x48, 0x3d, ...le32(HV_DOORBELL_LAST - HV_DOORBELL_FIRST)],
  ...[0x77, 0x04],
  ...[0x31, 0xc0],
  0xef,
  0xc3,
  ...[0xe6, HV_HYPERCALL_PORT],
  0xc3,
];

/** Offset of the doorbell `out dx, eax` (EF) in `HYPERCALL_PAGE_CODE_LONG_MODE`. */
export const DOORBELL_OUT_OFFSET = HYPERCALL_PAGE_CODE_LONG_MODE.indexOf(0xef);
/** Offset of the hypercall `out 0xE3, al` (E6 ib) in each page. */
export const HYPERCALL_OUT_OFFSET = HYPERCALL_PAGE_CODE.indexOf(0xe6);
export const HYPERCALL_OUT_OFFSET_LONG_MODE = HYPERCALL_PAGE_CODE_LONG_MODE.lastIndexOf(0xe6);

function le32(v: number): number[] {
  return [0, 8, 16, 24].map((s) => (v >>> s) & 0xff);
}

// --- CPUID leaves ---

export const HV_CPUID_VENDOR_AND_MAX_FUNCTIONS = 0x40000000;
export const HV_CPUID_INTERFACE = 0x40000001;
export const HV_CPUID_VERSION = 0x40000002;
export const HV_CPUID_FEATURES = 0x40000003;
export const HV_CPUID_ENLIGHTENMENT_INFO = 0x40000004;
export const HV_CPUID_IMPLEMENT_LIMITS = 0x40000005;
export const HV_CPUID_HARDWARE_FEATURES = 0x40000006;
export const HV_CPUID_CPU_MANAGEMENT_FEATURES = 0x40000007;
export const HV_CPUID_NESTED_FEATURES = 0x4000000a;
/** Highest leaf of the Microsoft range that hyperdeno answers. */
export const HV_CPUID_MAX_LEAF = HV_CPUID_NESTED_FEATURES;
export const HV_CPUID_SYNDBG_VENDOR_AND_MAX_FUNCTIONS = 0x40000080;
export const HV_CPUID_SYNDBG_INTERFACE = 0x40000081;
export const HV_CPUID_SYNDBG_PLATFORM_CAPABILITIES = 0x40000082;

/** "Hv#1" in CPUID 0x40000001 EAX. */
export const HV_INTERFACE_SIGNATURE = 0x31237648;
/** "VS#1" in CPUID 0x40000081 EAX. */
export const HV_SYNDBG_INTERFACE_SIGNATURE = 0x31235356;
/** Vendor signature of leaf 0x40000000 (EBX, ECX, EDX as 12 ASCII bytes). */
export const HV_VENDOR_ID = "Microsoft Hv";
/** Vendor signature of leaf 0x40000080. */
export const HV_SYNDBG_VENDOR_ID = "Microsoft VS";

// 0x40000003 EAX: partition privileges, low half.
export const HV_MSR_VP_RUNTIME_AVAILABLE = 1 << 0;
export const HV_MSR_TIME_REF_COUNT_AVAILABLE = 1 << 1;
export const HV_MSR_SYNIC_AVAILABLE = 1 << 2;
export const HV_MSR_SYNTIMER_AVAILABLE = 1 << 3;
export const HV_MSR_APIC_ACCESS_AVAILABLE = 1 << 4;
export const HV_MSR_HYPERCALL_AVAILABLE = 1 << 5;
export const HV_MSR_VP_INDEX_AVAILABLE = 1 << 6;
export const HV_MSR_RESET_AVAILABLE = 1 << 7;
export const HV_MSR_REFERENCE_TSC_AVAILABLE = 1 << 9;
export const HV_ACCESS_FREQUENCY_MSRS = 1 << 11;
export const HV_ACCESS_REENLIGHTENMENT = 1 << 13;
export const HV_ACCESS_TSC_INVARIANT = 1 << 15;
// 0x40000003 EBX: partition privileges, high half.
export const HV_ACCESS_PARTITION_ID = 1 << 1;
export const HV_POST_MESSAGES = 1 << 4;
export const HV_SIGNAL_EVENTS = 1 << 5;
export const HV_DEBUGGING = 1 << 11;
export const HV_ENABLE_EXTENDED_HYPERCALLS = 1 << 20;
// 0x40000003 EDX: features.
export const HV_GUEST_DEBUGGING_AVAILABLE = 1 << 1;
export const HV_HYPERCALL_XMM_INPUT_AVAILABLE = 1 << 4;
export const HV_FREQUENCY_MSRS_AVAILABLE = 1 << 8;
export const HV_GUEST_CRASH_MSR_AVAILABLE = 1 << 10;
export const HV_DEBUG_MSRS_AVAILABLE = 1 << 11;
export const HV_EXT_GVA_RANGES_FLUSH_AVAILABLE = 1 << 14;
export const HV_HYPERCALL_XMM_OUTPUT_AVAILABLE = 1 << 15;
export const HV_STIMER_DIRECT_MODE_AVAILABLE = 1 << 19;
// 0x40000004 EAX: recommendations.
export const HV_REMOTE_TLB_FLUSH_RECOMMENDED = 1 << 2;
export const HV_APIC_ACCESS_RECOMMENDED = 1 << 3;
export const HV_SYSTEM_RESET_RECOMMENDED = 1 << 4;
export const HV_RELAXED_TIMING_RECOMMENDED = 1 << 5;
export const HV_DEPRECATING_AEOI_RECOMMENDED = 1 << 9;
export const HV_CLUSTER_IPI_RECOMMENDED = 1 << 10;
export const HV_EX_PROCESSOR_MASKS_RECOMMENDED = 1 << 11;
/** 0x40000004 EBX value meaning "never notify about long spin waits". */
export const HV_SPINLOCK_NEVER_NOTIFY = 0xffffffff;
// 0x40000006 EAX: hardware features in use.
export const HV_HW_MSR_BITMAPS_IN_USE = 1 << 1;
export const HV_HW_SLAT_IN_USE = 1 << 3;
// 0x40000082 EAX.
export const HV_SYNDBG_CAP_ALLOW_KERNEL_DEBUGGING = 1 << 1;

// --- Synthetic MSRs ---

export const HV_X64_MSR_GUEST_OS_ID = 0x40000000;
export const HV_X64_MSR_HYPERCALL = 0x40000001;
export const HV_X64_MSR_VP_INDEX = 0x40000002;
export const HV_X64_MSR_RESET = 0x40000003;
export const HV_X64_MSR_VP_RUNTIME = 0x40000010;
export const HV_X64_MSR_TIME_REF_COUNT = 0x40000020;
export const HV_X64_MSR_REFERENCE_TSC = 0x40000021;
export const HV_X64_MSR_TSC_FREQUENCY = 0x40000022;
export const HV_X64_MSR_APIC_FREQUENCY = 0x40000023;
export const HV_X64_MSR_EOI = 0x40000070;
export const HV_X64_MSR_ICR = 0x40000071;
export const HV_X64_MSR_TPR = 0x40000072;
export const HV_X64_MSR_VP_ASSIST_PAGE = 0x40000073;
export const HV_X64_MSR_SCONTROL = 0x40000080;
export const HV_X64_MSR_SVERSION = 0x40000081;
export const HV_X64_MSR_SIEFP = 0x40000082;
export const HV_X64_MSR_SIMP = 0x40000083;
export const HV_X64_MSR_EOM = 0x40000084;
export const HV_X64_MSR_SINT0 = 0x40000090;
export const HV_X64_MSR_SINT15 = 0x4000009f;
export const HV_X64_MSR_STIMER0_CONFIG = 0x400000b0;
export const HV_X64_MSR_STIMER3_COUNT = 0x400000b7;
export const HV_X64_MSR_SYNDBG_CONTROL = 0x400000f1;
export const HV_X64_MSR_SYNDBG_STATUS = 0x400000f2;
export const HV_X64_MSR_SYNDBG_SEND_BUFFER = 0x400000f3;
export const HV_X64_MSR_SYNDBG_RECV_BUFFER = 0x400000f4;
export const HV_X64_MSR_SYNDBG_PENDING_BUFFER = 0x400000f5;
export const HV_X64_MSR_SYNDBG_OPTIONS = 0x400000ff;
export const HV_X64_MSR_CRASH_P0 = 0x40000100;
export const HV_X64_MSR_CRASH_P4 = 0x40000104;
export const HV_X64_MSR_CRASH_CTL = 0x40000105;
export const HV_X64_MSR_REENLIGHTENMENT_CONTROL = 0x40000106;
export const HV_X64_MSR_TSC_EMULATION_CONTROL = 0x40000107;
export const HV_X64_MSR_TSC_EMULATION_STATUS = 0x40000108;
export const HV_X64_MSR_TSC_INVARIANT_CONTROL = 0x40000118;

// MSR bit fields.
/** Enable bit shared by the HYPERCALL, REFERENCE_TSC, VP_ASSIST_PAGE, SIMP and SIEFP MSRs. */
export const HV_MSR_ENABLE = 1n;
/** HYPERCALL MSR: once set, the MSR is immutable until reset. */
export const HV_HYPERCALL_LOCKED = 2n;
/** GPA field (bits 63:12) of the page MSRs. */
export const HV_MSR_PAGE_MASK = ~0xfffn & 0xffff_ffff_ffff_ffffn;
export const HV_CRASH_CTL_CRASH_NOTIFY_MSG = 1n << 62n;
export const HV_CRASH_CTL_CRASH_NOTIFY = 1n << 63n;
/** SCONTROL: SynIC enable. */
export const HV_SYNIC_CONTROL_ENABLE = 1n;
export const HV_SYNIC_VERSION = 1n;
export const HV_SYNIC_SINT_COUNT = 16;
export const HV_SYNIC_SINT_VECTOR_MASK = 0xffn;
export const HV_SYNIC_SINT_MASKED = 1n << 16n;
export const HV_SYNIC_SINT_AUTO_EOI = 1n << 17n;
export const HV_SYNIC_SINT_POLLING = 1n << 18n;
/** Reset value of every SINT register: masked, vector 0. */
export const HV_SYNIC_SINT_DEFAULT = HV_SYNIC_SINT_MASKED;
export const HV_SYNIC_FIRST_VALID_VECTOR = 16;
export const HV_SYNIC_STIMER_COUNT = 4;
// STIMERx_CONFIG fields.
export const HV_STIMER_ENABLE = 1n << 0n;
export const HV_STIMER_PERIODIC = 1n << 1n;
export const HV_STIMER_LAZY = 1n << 2n;
export const HV_STIMER_AUTO_ENABLE = 1n << 3n;
export const HV_STIMER_APIC_VECTOR_SHIFT = 4n;
export const HV_STIMER_DIRECT_MODE = 1n << 12n;
export const HV_STIMER_SINTX_SHIFT = 16n;
/** RsvdZ bits of STIMERx_CONFIG: 15:13 and 63:20. */
export const HV_STIMER_CONFIG_RSVDZ = (0x7n << 13n) | (~0xfffffn & 0xffff_ffff_ffff_ffffn);
// REENLIGHTENMENT_CONTROL fields: vector 7:0, enabled 16, target VP 63:32.
export const HV_REENLIGHTENMENT_ENABLED = 1n << 16n;
export const HV_REENLIGHTENMENT_RSVDZ = (0xffn << 8n) | (0x7fffn << 17n);
/**
 * SYNDBG_OPTIONS: the guest debugger uses hypercalls (HvPostDebugData, ...) instead of the
 * buffer MSRs. The host sets it before the guest runs; KVM refuses the calls without it.
 */
export const HV_SYNDBG_OPTION_USE_HCALLS = 1n << 2n;
// SYNDBG_CONTROL fields (QEMU target/i386/kvm/hyperv-proto.h): send, receive, send size 31:16.
export const HV_SYNDBG_CONTROL_SEND = 1n << 0n;
export const HV_SYNDBG_CONTROL_RECV = 1n << 1n;
export const HV_SYNDBG_CONTROL_SEND_SIZE_SHIFT = 16n;
export const HV_SYNDBG_CONTROL_SEND_SIZE_MASK = 0xffffn;
// SYNDBG_STATUS fields: 0 means the last operation failed (or found nothing to receive);
// received size in 31:16.
export const HV_SYNDBG_STATUS_SEND_SUCCESS = 1n << 0n;
export const HV_SYNDBG_STATUS_RECV_SUCCESS = 1n << 2n;
export const HV_SYNDBG_STATUS_RESET = 1n << 3n;
export const HV_SYNDBG_STATUS_SIZE_SHIFT = 16n;

// --- Guest OS identity (HV_X64_MSR_GUEST_OS_ID) ---

/** Bit 63: open-source OS encoding (OS type in bits 62:56). */
export const HV_GUEST_OS_OPEN_SOURCE = 1n << 63n;
export const HV_GUEST_OS_TYPE_LINUX = 1;
export const HV_GUEST_OS_TYPE_FREEBSD = 2;
/** Vendor field (bits 62:48) of proprietary OSes: Microsoft. */
export const HV_GUEST_OS_VENDOR_MICROSOFT = 1;

// --- Hypercalls ---

/** Hypercall input value (control) fields. */
export const HV_HYPERCALL_FAST_BIT = 1n << 16n;
export const HV_HYPERCALL_VARHEAD_SHIFT = 17n;
export const HV_HYPERCALL_VARHEAD_MASK = 0x3ffn;
export const HV_HYPERCALL_REP_COUNT_SHIFT = 32n;
export const HV_HYPERCALL_REP_START_SHIFT = 48n;
export const HV_HYPERCALL_REP_MASK = 0xfffn;
/** RsvdZ bits of the control value: 31:27, 47:44, 63:60. */
export const HV_HYPERCALL_RSVD_MASK = (0x1fn << 27n) | (0xfn << 44n) | (0xfn << 60n);
/** Result value: reps completed in bits 43:32. */
export const HV_HYPERCALL_REP_COMP_SHIFT = 32n;
/** Fast hypercall input/output block: RDX, R8 and XMM0-XMM5. */
export const HV_FAST_INPUT_MAX = 16;
export const HV_XMM_FAST_INPUT_MAX = 112;
export const HV_HYPERCALL_XMM_REGISTERS = 6;

export const HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE = 0x0002;
export const HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST = 0x0003;
export const HVCALL_NOTIFY_LONG_SPIN_WAIT = 0x0008;
export const HVCALL_SEND_IPI = 0x000b;
export const HVCALL_FLUSH_VIRTUAL_ADDRESS_SPACE_EX = 0x0013;
export const HVCALL_FLUSH_VIRTUAL_ADDRESS_LIST_EX = 0x0014;
export const HVCALL_SEND_IPI_EX = 0x0015;
export const HVCALL_POST_MESSAGE = 0x005c;
export const HVCALL_SIGNAL_EVENT = 0x005d;
export const HVCALL_POST_DEBUG_DATA = 0x0069;
export const HVCALL_RETRIEVE_DEBUG_DATA = 0x006a;
export const HVCALL_RESET_DEBUG_SESSION = 0x006b;

/** HV_STATUS values (the low 16 bits of a hypercall result). */
export const HV_STATUS_SUCCESS = 0x0000;
export const HV_STATUS_INVALID_HYPERCALL_CODE = 0x0002;
export const HV_STATUS_INVALID_HYPERCALL_INPUT = 0x0003;
export const HV_STATUS_INVALID_ALIGNMENT = 0x0004;
export const HV_STATUS_INVALID_PARAMETER = 0x0005;
export const HV_STATUS_ACCESS_DENIED = 0x0006;
export const HV_STATUS_OPERATION_DENIED = 0x0008;
export const HV_STATUS_INSUFFICIENT_MEMORY = 0x000b;
export const HV_STATUS_INVALID_PORT_ID = 0x0011;
export const HV_STATUS_INVALID_CONNECTION_ID = 0x0012;
export const HV_STATUS_INSUFFICIENT_BUFFERS = 0x0013;
export const HV_STATUS_INVALID_VP_INDEX = 0x000e;
export const HV_STATUS_INVALID_SYNIC_STATE = 0x0018;
/** HvRetrieveDebugData: nothing was received. */
export const HV_STATUS_NO_DATA = 0x001b;

// Flush flags (HV_FLUSH_FLAGS).
export const HV_FLUSH_ALL_PROCESSORS = 1n << 0n;
export const HV_FLUSH_ALL_VIRTUAL_ADDRESS_SPACES = 1n << 1n;
export const HV_FLUSH_NON_GLOBAL_MAPPINGS_ONLY = 1n << 2n;
export const HV_FLUSH_USE_EXTENDED_RANGE_FORMAT = 1n << 3n;
export const HV_FLUSH_FLAGS_VALID = 0xfn;

// HV_VP_SET formats.
export const HV_GENERIC_SET_SPARSE_4K = 0n;
export const HV_GENERIC_SET_ALL = 1n;
/** Valid IPI vectors. */
export const HV_IPI_LOW_VECTOR = 0x10;
export const HV_IPI_HIGH_VECTOR = 0xff;
/** HV_CONNECTION_ID: bits 23:0 are the id, 31:24 RsvdZ. */
export const HV_CONNECTION_ID_MASK = 0x00ffffff;

// --- SynIC messages ---

export const HV_MESSAGE_SIZE = 256;
export const HV_MESSAGE_PAYLOAD_MAX = 240;
/** Bytes of one SINT's event flags in the SIEF page (2048 flags). */
export const HV_EVENT_FLAGS_BYTES = 256;
export const HV_EVENT_FLAGS_COUNT = HV_EVENT_FLAGS_BYTES * 8;
/** hv_message_flags.msg_pending. */
export const HV_MESSAGE_FLAG_PENDING = 0x01;
export const HVMSG_NONE = 0x00000000;
export const HVMSG_TIMER_EXPIRED = 0x80000010;
/** Message types with this bit set are reserved for the hypervisor (HvPostMessage refuses them). */
export const HV_MESSAGE_TYPE_HYPERVISOR_BIT = 0x80000000;

/** `struct hv_message` (header + 240-byte payload): one SIM page slot. */
export const HV_MESSAGE = defineLayout("hv_message", HV_MESSAGE_SIZE, {
  messageType: { offset: 0, type: "u32" },
  payloadSize: { offset: 4, type: "u8" },
  messageFlags: { offset: 5, type: "u8" },
  reserved: { offset: 6, type: "u16" },
  sender: { offset: 8, type: "u64" },
  payload: { offset: 16, type: { bytes: HV_MESSAGE_PAYLOAD_MAX } },
});

/** `struct hv_timer_message_payload`: the payload of HVMSG_TIMER_EXPIRED. */
export const HV_TIMER_MESSAGE_PAYLOAD = defineLayout("hv_timer_message_payload", 24, {
  timerIndex: { offset: 0, type: "u32" },
  reserved: { offset: 4, type: "u32" },
  expirationTime: { offset: 8, type: "u64" },
  deliveryTime: { offset: 16, type: "u64" },
});

/** `struct ms_hyperv_tsc_page` (the first 24 bytes of the reference TSC page). */
export const HV_REFERENCE_TSC_PAGE = defineLayout("ms_hyperv_tsc_page", 24, {
  tscSequence: { offset: 0, type: "u32" },
  reserved1: { offset: 4, type: "u32" },
  tscScale: { offset: 8, type: "u64" },
  tscOffset: { offset: 16, type: "i64" },
});

/** HvCallPostMessage input (`struct hv_input_post_message`). */
export const HV_INPUT_POST_MESSAGE = defineLayout("hv_input_post_message", 256, {
  connectionId: { offset: 0, type: "u32" },
  reserved: { offset: 4, type: "u32" },
  messageType: { offset: 8, type: "u32" },
  payloadSize: { offset: 12, type: "u32" },
  payload: { offset: 16, type: { bytes: HV_MESSAGE_PAYLOAD_MAX } },
});

/** HvCallSignalEvent input. */
export const HV_INPUT_SIGNAL_EVENT = defineLayout("hv_input_signal_event", 8, {
  connectionId: { offset: 0, type: "u32" },
  flagNumber: { offset: 4, type: "u16" },
  reserved: { offset: 6, type: "u16" },
});

/** HvFlushVirtualAddressSpace/List input header (`struct hv_tlb_flush`). */
export const HV_TLB_FLUSH = defineLayout("hv_tlb_flush", 24, {
  addressSpace: { offset: 0, type: "u64" },
  flags: { offset: 8, type: "u64" },
  processorMask: { offset: 16, type: "u64" },
});

/** HvFlushVirtualAddressSpaceEx/ListEx fixed header (`struct hv_tlb_flush_ex` up to the banks). */
export const HV_TLB_FLUSH_EX = defineLayout("hv_tlb_flush_ex", 32, {
  addressSpace: { offset: 0, type: "u64" },
  flags: { offset: 8, type: "u64" },
  format: { offset: 16, type: "u64" },
  validBankMask: { offset: 24, type: "u64" },
});

/** HvCallSendSyntheticClusterIpi input (`struct hv_send_ipi`). */
export const HV_SEND_IPI = defineLayout("hv_send_ipi", 16, {
  vector: { offset: 0, type: "u32" },
  targetVtl: { offset: 4, type: "u8" },
  reserved: { offset: 5, type: { bytes: 3 } },
  cpuMask: { offset: 8, type: "u64" },
});

/** HvCallSendSyntheticClusterIpiEx fixed header (`struct hv_send_ipi_ex` up to the banks). */
export const HV_SEND_IPI_EX = defineLayout("hv_send_ipi_ex", 24, {
  vector: { offset: 0, type: "u32" },
  targetVtl: { offset: 4, type: "u8" },
  reserved: { offset: 5, type: { bytes: 3 } },
  format: { offset: 8, type: "u64" },
  validBankMask: { offset: 16, type: "u64" },
});

// --- Synthetic debugger hypercalls (HvPostDebugData, HvRetrieveDebugData, HvResetDebugSession) ---
// Layouts as in Windows' hvgdk_mini.h and QEMU include/hw/hyperv/hyperv-proto.h (packed).

/** Largest debug payload of one call: a page minus the 8-byte header. */
export const HV_DEBUG_MAXIMUM_DATA_SIZE = 4088;
/** HvPostDebugData options. */
export const HV_DEBUG_POST_LOOP = 0x1;
export const HV_DEBUG_POST_RAW_PACKET = 0x2;
export const HV_DEBUG_POST_OPTIONS_VALID = 0x3;
/** HvRetrieveDebugData options. */
export const HV_DEBUG_RETRIEVE_LOOP = 0x1;
export const HV_DEBUG_RETRIEVE_TEST_ACTIVITY = 0x2;
export const HV_DEBUG_RETRIEVE_RAW_PACKET = 0x4;
export const HV_DEBUG_RETRIEVE_OPTIONS_VALID = 0x7;
/** HvResetDebugSession options. */
export const HV_DEBUG_PURGE_INCOMING_DATA = 0x1;
export const HV_DEBUG_PURGE_OUTGOING_DATA = 0x2;
export const HV_DEBUG_RETRIEVE_DEBUG_CONFIG = 0x4;
export const HV_DEBUG_USE_RAW_PACKETS = 0x8;
export const HV_DEBUG_RESET_OPTIONS_VALID = 0xf;

/** HvPostDebugData input header; `count` bytes of data follow it. */
export const HV_INPUT_POST_DEBUG_DATA = defineLayout("hv_input_post_debug_data", 8, {
  count: { offset: 0, type: "u32" },
  options: { offset: 4, type: "u32" },
});

/** HvPostDebugData output. */
export const HV_OUTPUT_POST_DEBUG_DATA = defineLayout("hv_output_post_debug_data", 4, {
  pendingCount: { offset: 0, type: "u32" },
});

/** HvRetrieveDebugData input; `timeout` in 100 ns units. */
export const HV_INPUT_RETRIEVE_DEBUG_DATA = defineLayout("hv_input_retrieve_debug_data", 16, {
  count: { offset: 0, type: "u32" },
  options: { offset: 4, type: "u32" },
  timeout: { offset: 8, type: "u64" },
});

/** HvRetrieveDebugData output header; the received bytes follow it. */
export const HV_OUTPUT_RETRIEVE_DEBUG_DATA = defineLayout("hv_output_retrieve_debug_data", 8, {
  retrievedCount: { offset: 0, type: "u32" },
  remainingCount: { offset: 4, type: "u32" },
});

/** HvResetDebugSession input. */
export const HV_INPUT_RESET_DEBUG_SESSION = defineLayout("hv_input_reset_debug_session", 4, {
  options: { offset: 0, type: "u32" },
});

/**
 * HvResetDebugSession output (`HV_DEBUG_NET_DATA`): where the debugger is. Addresses and ports
 * are host-order integers (QEMU writes `ntohl(sin_addr)`), MACs all zero.
 */
export const HV_OUTPUT_RESET_DEBUG_SESSION = defineLayout("hv_output_reset_debug_session", 24, {
  hostIp: { offset: 0, type: "u32" },
  targetIp: { offset: 4, type: "u32" },
  hostPort: { offset: 8, type: "u16" },
  targetPort: { offset: 10, type: "u16" },
  hostMac: { offset: 12, type: { bytes: 6 } },
  targetMac: { offset: 18, type: { bytes: 6 } },
});
