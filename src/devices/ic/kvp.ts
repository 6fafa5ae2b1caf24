/**
 * KVP (key-value pair exchange) IC: host-side get/set/delete/enumerate on the guest's pools.
 *
 * Protocol (Linux `drivers/hv/hv_kvp.c`, `tools/hv/hv_kvp_daemon.c`): every transaction starts
 * at the host; the guest kernel forwards it to the `hv_kvp_daemon` user-space daemon and answers
 * in the host's own buffer, so requests carry a full 2580-byte `hv_kvp_msg`. Keys and values
 * travel as NUL-terminated UTF-16LE (key ≤ 512 bytes, value ≤ 2048 bytes); sizes include the
 * terminator. Status S_OK is success; S_CONT means "no such key" (get/delete) or "no more
 * entries" (enumerate); E_FAIL comes back when the daemon did not answer the kernel in 30 s.
 *
 * Linux handles one transaction at a time (it stops reading the ring until the daemon answers),
 * so this device queues requests and sends the next only after the previous one settled. Until
 * the daemon registers, Linux does not even read the NEGOTIATE message: the IC stays
 * `negotiating` and requests fail at once with `not-ready` (or wait with `waitReady`).
 *
 * Pools (`KvpPool`): the host writes EXTERNAL (0), which the daemon keeps in
 * `/var/lib/hyperv/.kvp_pool_0`; guest software publishes into GUEST (1); the daemon generates
 * AUTO (2: FullyQualifiedDomainName, OSName, NetworkAddressIPv4, …, enumerate only).
 *
 * Linux 6.1 quirk: the daemon answers GET for an existing key with an empty string (the kernel
 * passes it no value size and reads the value 4 bytes off), so `lookup` (enumerate and match)
 * is the way to read a value back from a Linux guest; `get` still tells whether the key exists.
 * @module
 */
import { IcDevice, IcError, type IcOptions, type IcResponse } from "./framework.ts";
import {
  decodeUtf16z,
  encodeUtf16z,
  formatIcStatus,
  HV_KVP_EXCHANGE_MAX_KEY_SIZE,
  HV_KVP_EXCHANGE_MAX_VALUE_SIZE,
  IcClassId,
  IcInstanceId,
  IcMessageType,
  IcStatus,
  KVP_MESSAGE_SIZE,
  KVP_POOL_COUNT,
  KVP_VERSIONS,
  KvpDeleteMessage,
  KvpEnumerateMessage,
  KvpGetSetMessage,
  KvpIpInfoMessage,
  KvpOperation,
  KvpValueType,
} from "./protocol.ts";

/** A KVP value: a string (REG_SZ), a u32 `number` (REG_U32) or a u64 `bigint` (REG_U64). */
export type KvpValue = string | number | bigint;

/** One pool entry. */
export interface KvpEntry {
  /** Key name. */
  readonly key: string;
  /** Value (Linux guests answer every value as a string). */
  readonly value: KvpValue;
}

/** A guest adapter's addresses as its KVP daemon reports them (GET_IP_INFO). */
export interface KvpIpInfo {
  /** The adapter asked about (its MAC, upper case). */
  readonly adapter: string;
  /** IPv4 and IPv6 addresses. */
  readonly addresses: string[];
  /** Subnets (IPv4 masks, IPv6 prefix lengths), in the order of `addresses`. */
  readonly subnets: string[];
  readonly gateways: string[];
  readonly dns: string[];
  readonly dhcp: boolean;
}

/** Per-request options. */
export interface KvpRequestOptions {
  /** Total wait for the answer, queueing included (default the IC's `requestTimeoutMs`). */
  readonly timeoutMs?: number;
}

/** Options of `KvpIc`. */
export interface KvpIcOptions extends IcOptions {
  /**
   * Default wait per request in ms (default 35 000: longer than Linux's own 30 s wait for its
   * daemon, so a stuck daemon shows up as the guest's E_FAIL rather than a host timeout).
   */
  readonly requestTimeoutMs?: number;
  /** Requests that may wait behind the one in flight (default 64); more fail with `busy`. */
  readonly maxQueued?: number;
}

interface Op {
  readonly what: string;
  readonly body: Uint8Array;
  readonly timeoutMs: number;
  readonly deadline: number;
  readonly resolve: (r: IcResponse) => void;
  readonly reject: (e: Error) => void;
  timer: unknown;
}

/** Longest `list` the host accepts from a guest before it stops enumerating. */
const MAX_LIST_ENTRIES = 4096;

/** The KVP IC device. */
export class KvpIc extends IcDevice {
  readonly #timeoutMs: number;
  readonly #maxQueued: number;
  readonly #queue: Op[] = [];
  #inFlight: Op | undefined;

  /** Creates the device; register it with `VmbusServer.addDevice`. */
  constructor(options: KvpIcOptions = {}) {
    super({
      classId: IcClassId.KVP,
      instanceId: IcInstanceId.KVP,
      name: "kvp",
      messageVersions: KVP_VERSIONS,
    }, options);
    this.#timeoutMs = options.requestTimeoutMs ?? 35_000;
    this.#maxQueued = options.maxQueued ?? 64;
  }

  /** Requests waiting behind the one in flight. */
  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Sets `key` to `value` in `pool` (usually `KvpPool.EXTERNAL`). Rejects with `IcError`
   * (`status` when the guest refused), `RangeError`/`TypeError` for bad arguments.
   */
  async set(
    pool: number,
    key: string,
    value: KvpValue,
    options?: KvpRequestOptions,
  ): Promise<void> {
    const keyBytes = checkArgs(pool, key);
    const msg = new Uint8Array(KVP_MESSAGE_SIZE);
    let valueType: number;
    let valueBytes: Uint8Array;
    if (typeof value === "string") {
      const v = encodeUtf16z(value, HV_KVP_EXCHANGE_MAX_VALUE_SIZE);
      if (!v) {
        throw new RangeError(`KVP value is ${value.length} characters; the limit is 1023`);
      }
      valueType = KvpValueType.SZ;
      valueBytes = v;
    } else if (typeof value === "number") {
      if (!Number.isInteger(value) || value < 0 || value > 0xffff_ffff) {
        throw new RangeError(`KVP number value ${value} is not a u32; pass a bigint for u64`);
      }
      valueType = KvpValueType.U32;
      valueBytes = new Uint8Array(4);
      new DataView(valueBytes.buffer).setUint32(0, value, true);
    } else if (typeof value === "bigint") {
      if (value < 0n || value > 0xffff_ffff_ffff_ffffn) {
        throw new RangeError(`KVP bigint value ${value} is not a u64`);
      }
      valueType = KvpValueType.U64;
      valueBytes = new Uint8Array(8);
      new DataView(valueBytes.buffer).setBigUint64(0, value, true);
    } else {
      throw new TypeError("a KVP value is a string, a u32 number or a u64 bigint");
    }
    KvpGetSetMessage.encode({
      operation: KvpOperation.SET,
      pool,
      valueType,
      keySize: keyBytes.length,
      valueSize: valueBytes.length,
      key: keyBytes,
      value: valueBytes,
    }, msg);
    const r = await this.#enqueue(`set "${key}" in pool ${pool}`, msg, options);
    if (r.status !== IcStatus.S_OK) throw statusError(`set "${key}" in pool ${pool}`, r.status);
  }

  /**
   * Reads `key` from `pool`; `undefined` when the guest has no such key. On Linux guests an
   * existing key reads as `""` (see the module notes): use `lookup` to read values back.
   */
  async get(
    pool: number,
    key: string,
    options?: KvpRequestOptions,
  ): Promise<KvpValue | undefined> {
    const keyBytes = checkArgs(pool, key);
    const msg = new Uint8Array(KVP_MESSAGE_SIZE);
    KvpGetSetMessage.encode({
      operation: KvpOperation.GET,
      pool,
      keySize: keyBytes.length,
      key: keyBytes,
    }, msg);
    const what = `get "${key}" from pool ${pool}`;
    const r = await this.#enqueue(what, msg, options);
    if (r.status === IcStatus.S_CONT) return undefined;
    if (r.status !== IcStatus.S_OK) throw statusError(what, r.status);
    const d = KvpGetSetMessage.decode(r.body);
    if (!d) throw this.#protocol(what, `answer body is ${r.body.length} bytes`);
    return this.#value(what, d.valueType, d.valueSize, d.value);
  }

  /** Deletes `key` from `pool`; false when the guest had no such key. */
  async delete(pool: number, key: string, options?: KvpRequestOptions): Promise<boolean> {
    const keyBytes = checkArgs(pool, key);
    const msg = new Uint8Array(KVP_MESSAGE_SIZE);
    KvpDeleteMessage.encode({
      operation: KvpOperation.DELETE,
      pool,
      keySize: keyBytes.length,
      key: keyBytes,
    }, msg);
    const what = `delete "${key}" from pool ${pool}`;
    const r = await this.#enqueue(what, msg, options);
    if (r.status === IcStatus.S_CONT) return false;
    if (r.status !== IcStatus.S_OK) throw statusError(what, r.status);
    return true;
  }

  /** Entry `index` of `pool`; `undefined` past the end. */
  async enumerate(
    pool: number,
    index: number,
    options?: KvpRequestOptions,
  ): Promise<KvpEntry | undefined> {
    checkPool(pool);
    if (!Number.isInteger(index) || index < 0 || index > 0xffff_ffff) {
      throw new RangeError(`KVP index ${index} is not a u32`);
    }
    const msg = KvpEnumerateMessage.encode({
      operation: KvpOperation.ENUMERATE,
      pool,
      index,
    });
    const what = `enumerate pool ${pool} index ${index}`;
    const r = await this.#enqueue(what, msg, options);
    if (r.status === IcStatus.S_CONT) return undefined;
    if (r.status !== IcStatus.S_OK) throw statusError(what, r.status);
    const d = KvpEnumerateMessage.decode(r.body);
    if (!d) throw this.#protocol(what, `answer body is ${r.body.length} bytes`);
    if (d.keySize > HV_KVP_EXCHANGE_MAX_KEY_SIZE) {
      throw this.#protocol(what, `key size ${d.keySize} exceeds ${HV_KVP_EXCHANGE_MAX_KEY_SIZE}`);
    }
    const key = decodeUtf16z(d.key, d.keySize);
    return { key, value: this.#value(what, d.valueType, d.valueSize, d.value) };
  }

  /** Every entry of `pool`, enumerating from index 0 until the guest reports the end. */
  async list(pool: number, options?: KvpRequestOptions): Promise<KvpEntry[]> {
    const out: KvpEntry[] = [];
    for (let i = 0; i < MAX_LIST_ENTRIES; i++) {
      const e = await this.enumerate(pool, i, options);
      if (!e) return out;
      out.push(e);
    }
    return out;
  }

  /** The value of `key` in `pool`, found by enumerating it; `undefined` when absent. */
  async lookup(
    pool: number,
    key: string,
    options?: KvpRequestOptions,
  ): Promise<KvpValue | undefined> {
    checkArgs(pool, key);
    for (let i = 0; i < MAX_LIST_ENTRIES; i++) {
      const e = await this.enumerate(pool, i, options);
      if (!e) return undefined;
      if (e.key === key) return e.value;
    }
    return undefined;
  }

  /**
   * The addresses of the guest adapter with MAC `mac` (`52:54:00:ab:cd:02`), asked with the
   * KVP IP-info operation (Linux: answered by `hv_kvp_daemon` from the interface whose
   * `address` matches). `undefined` when the guest has no such adapter or no address on it.
   */
  async ipInfo(mac: string, options?: KvpRequestOptions): Promise<KvpIpInfo | undefined> {
    const adapter = mac.toUpperCase();
    const id = encodeUtf16z(adapter, 256);
    if (!id) throw new RangeError(`adapter id '${mac}' is too long`);
    const msg = KvpIpInfoMessage.encode({
      operation: KvpOperation.GET_IP_INFO,
      pool: 0,
      adapterId: id,
    });
    const what = `IP info of ${adapter}`;
    const r = await this.#enqueue(what, msg, options);
    if (r.status !== IcStatus.S_OK) return undefined;
    const d = KvpIpInfoMessage.decode(r.body);
    if (!d) throw this.#protocol(what, `answer body is ${r.body.length} bytes`);
    const list = (b: Uint8Array) =>
      decodeUtf16z(b, b.length).split(";").map((s) => s.trim()).filter((s) => s !== "");
    const addresses = list(d.ipAddr);
    if (addresses.length === 0) return undefined;
    return {
      adapter,
      addresses,
      subnets: list(d.subNet),
      gateways: list(d.gateway),
      dns: list(d.dnsAddr),
      dhcp: d.dhcpEnabled !== 0,
    };
  }

  /** Stops this IC's traffic. */
  protected override closed(): void {
    this.#failQueued(new IcError("closed", "kvp: the guest closed the channel"));
  }

  /** Stops timers and fails what is queued. */
  protected override disposing(): void {
    this.#failQueued(new IcError("closed", "kvp is disposed"));
  }

  #enqueue(what: string, body: Uint8Array, options?: KvpRequestOptions): Promise<IcResponse> {
    const timeoutMs = options?.timeoutMs ?? this.#timeoutMs;
    return new Promise((resolve, reject) => {
      const notReady = this.readinessError();
      if (notReady) {
        reject(
          this.state === "negotiating" && !this.disposed
            ? new IcError(
              "not-ready",
              "kvp: the guest has not answered version negotiation; Linux answers once hv_kvp_daemon runs",
            )
            : notReady,
        );
        return;
      }
      if (this.#queue.length >= this.#maxQueued) {
        reject(new IcError("busy", `kvp: ${this.#queue.length} requests are already queued`));
        return;
      }
      const op: Op = {
        what,
        body,
        timeoutMs,
        deadline: this.scheduler.now() + timeoutMs,
        resolve,
        reject,
        timer: undefined,
      };
      if (Number.isFinite(timeoutMs)) {
        op.timer = this.scheduler.setTimeout(
          () => {
            const i = this.#queue.indexOf(op);
            if (i < 0) return;
            this.#queue.splice(i, 1);
            reject(new IcError("timeout", `kvp: ${what}: still queued after ${timeoutMs} ms`));
          },
          Math.max(0, timeoutMs),
          false,
        );
      }
      this.#queue.push(op);
      this.#pump();
    });
  }

  #pump(): void {
    while (!this.#inFlight && this.#queue.length > 0 && this.isReady) {
      const op = this.#queue.shift()!;
      if (op.timer !== undefined) this.scheduler.clearTimeout(op.timer);
      const remaining = op.deadline - this.scheduler.now();
      if (!(remaining > 0)) {
        op.reject(new IcError("timeout", `kvp: ${op.what}: timed out after ${op.timeoutMs} ms`));
        continue;
      }
      this.#inFlight = op;
      this.exchange(IcMessageType.KVP_EXCHANGE, op.body, remaining, (r) => {
        this.#inFlight = undefined;
        op.resolve(r);
        this.#pump();
      }, (e) => {
        this.#inFlight = undefined;
        op.reject(
          e.code === "timeout"
            ? new IcError(
              "timeout",
              `kvp: ${op.what}: the guest did not answer in ${op.timeoutMs} ms`,
            )
            : e,
        );
        this.#pump();
      });
    }
  }

  #failQueued(e: IcError): void {
    const ops = this.#queue.splice(0);
    for (const op of ops) {
      if (op.timer !== undefined) this.scheduler.clearTimeout(op.timer);
      op.reject(e);
    }
  }

  #value(what: string, type: number, size: number, bytes: Uint8Array): KvpValue {
    const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    switch (type) {
      case KvpValueType.SZ:
      case KvpValueType.EXPAND_SZ:
        if (size > HV_KVP_EXCHANGE_MAX_VALUE_SIZE) {
          throw this.#protocol(
            what,
            `value size ${size} exceeds ${HV_KVP_EXCHANGE_MAX_VALUE_SIZE}`,
          );
        }
        return decodeUtf16z(bytes, size);
      case KvpValueType.U32:
        if (size !== 4) throw this.#protocol(what, `u32 value size is ${size}`);
        return dv.getUint32(0, true);
      case KvpValueType.U64:
        if (size !== 8) throw this.#protocol(what, `u64 value size is ${size}`);
        return dv.getBigUint64(0, true);
      default:
        throw this.#protocol(what, `value type ${type} is unknown`);
    }
  }

  #protocol(what: string, why: string): IcError {
    this.malformed(`${what}: ${why}`);
    return new IcError("protocol", `kvp: ${what}: malformed answer: ${why}`);
  }
}

function checkPool(pool: number): void {
  if (!Number.isInteger(pool) || pool < 0 || pool >= KVP_POOL_COUNT) {
    throw new RangeError(`KVP pool ${pool} is invalid; pools are 0 to ${KVP_POOL_COUNT - 1}`);
  }
}

function checkArgs(pool: number, key: string): Uint8Array {
  checkPool(pool);
  if (typeof key !== "string" || key.length === 0) {
    throw new TypeError("a KVP key is a non-empty string");
  }
  const bytes = encodeUtf16z(key, HV_KVP_EXCHANGE_MAX_KEY_SIZE);
  if (!bytes) throw new RangeError(`KVP key is ${key.length} characters; the limit is 255`);
  return bytes;
}

function statusError(what: string, status: number): IcError {
  return new IcError(
    "status",
    `kvp: ${what} failed: guest status ${formatIcStatus(status)}`,
    status,
  );
}
