// Checks an event's inclusion proof in the browser, against a key the embedder pinned.
//
// The formats are those of schemas/README.md (and schemas/tlog.py, which this mirrors):
//   chain link   hash(seq) = SHA-256(prev_hash || canonical bytes)
//   Merkle tree  RFC 6962: leaf = SHA-256(0x00 || hash), node = SHA-256(0x01 || l || r);
//                the audit path is checked as RFC 9162 section 2.1.3.2 says
//   checkpoint   C2SP tlog-checkpoint: "<origin>\n<size>\n<base64 root>\n[extensions]"
//   signature    C2SP signed note, Ed25519 (Web Crypto): "— <name> <base64(keyhash || sig)>"
//                where keyhash = SHA-256(name || 0x0A || 0x01 || public key)[:4]
//
// Trust: the signature is checked with the pinned key only. A key the server publishes is
// shown (as a fingerprint) and never used: whoever could forge a proof could change it too.

const utf8 = new TextEncoder();
const DASH = "\u2014";

export function fromBase64(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) {
    throw new Error("not base64");
  }
  const bin = atob(text);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

export function fromHex(text) {
  if (typeof text !== "string" || !/^([0-9a-f]{2})*$/.test(text)) throw new Error("not hex");
  const out = new Uint8Array(text.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(text.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function toHex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(parts) {
  const arrays = parts.map((p) => (p instanceof Uint8Array ? p : Uint8Array.from(p)));
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of arrays) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}

export async function sha256(...parts) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", concat(parts)));
}

function equalBytes(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// -- keys ------------------------------------------------------------------------------
// A verifier key "<name>+<hex key hash>+<base64(0x01 || public key)>" (Go's sumdb/note).
export async function parseVerifierKey(text) {
  const s = String(text).trim();
  const first = s.indexOf("+");
  const second = s.indexOf("+", first + 1);
  if (first < 1 || second < 0) throw new Error("a verifier key is <name>+<hash>+<base64 key>");
  const name = s.slice(0, first);
  const hashHex = s.slice(first + 1, second);
  if (!/^[0-9a-f]{8}$/.test(hashHex)) throw new Error("the key hash is 8 hex digits");
  const raw = fromBase64(s.slice(second + 1));
  if (raw.length !== 33 || raw[0] !== 0x01) throw new Error("only Ed25519 keys are supported");
  const publicKey = raw.slice(1);
  const keyHash = (await sha256(utf8.encode(name), [0x0a, 0x01], publicKey)).slice(0, 4);
  if (toHex(keyHash) !== hashHex) throw new Error("the key hash does not match the key");
  const fingerprint = toHex(await sha256(publicKey));
  return { name, keyHash, publicKey, id: `${name}+${hashHex}`, fingerprint };
}

// -- signed notes and checkpoints ------------------------------------------------------
export function parseNote(note) {
  const cut = note.lastIndexOf("\n\n");
  if (cut < 0 || !note.endsWith("\n")) throw new Error("not a signed note");
  const text = note.slice(0, cut + 1);
  const signatures = [];
  for (const line of note.slice(cut + 2, -1).split("\n")) {
    const space = line.indexOf(" ");
    const last = line.lastIndexOf(" ");
    if (line.slice(0, space) !== DASH || last <= space + 1) throw new Error("bad signature line");
    const raw = fromBase64(line.slice(last + 1));
    if (raw.length < 5) throw new Error("bad signature line");
    signatures.push({ name: line.slice(space + 1, last), keyHash: raw.slice(0, 4), sig: raw.slice(4) });
  }
  return { text, signatures };
}

export function parseCheckpoint(text) {
  const lines = text.split("\n");
  if (lines.length < 4 || lines[lines.length - 1] !== "" || !lines[0]) {
    throw new Error("a checkpoint has an origin, a size and a root");
  }
  if (!/^(0|[1-9][0-9]*)$/.test(lines[1])) throw new Error("a checkpoint's size is a number");
  const root = fromBase64(lines[2]);
  if (root.length !== 32) throw new Error("a checkpoint's root is 32 bytes");
  return { origin: lines[0], size: BigInt(lines[1]), root, extensions: lines.slice(3, -1) };
}

async function verifySignature(key, text, sig) {
  if (sig.length !== 64) return false;
  const imported = await crypto.subtle.importKey("raw", key.publicKey, { name: "Ed25519" }, false,
                                                 ["verify"]);
  return crypto.subtle.verify({ name: "Ed25519" }, imported, sig, utf8.encode(text));
}

// -- Merkle tree -----------------------------------------------------------------------
const leafHash = (data) => sha256([0x00], data);
const nodeHash = (left, right) => sha256([0x01], left, right);

// The root that `proof` leads to from leaf hash `leaf` at `index` in a tree of `size`
// leaves (BigInt), or null when the path has the wrong length (RFC 9162 2.1.3.2).
export async function rootFromPath(leaf, index, size, proof) {
  if (index < 0n || index >= size) return null;
  let fn = index;
  let sn = size - 1n;
  let node = leaf;
  for (const p of proof) {
    if (sn === 0n) return null;
    if ((fn & 1n) === 1n || fn === sn) {
      node = await nodeHash(p, node);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      node = await nodeHash(node, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  return sn === 0n ? node : null;
}

// -- the event against its proof -------------------------------------------------------
const CANONICAL_KEYS = ["action", "actor", "category", "changes", "description", "id", "ip",
  "metadata", "occurred_at", "primary_resource", "received_at", "related_resources",
  "request_id", "severity", "tenant_id", "trace_id", "user_agent"];

function sameJson(a, b) {
  if (a === b) return true;
  if (typeof a !== typeof b || a === null || b === null || typeof a !== "object") return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => Object.hasOwn(b, k) && sameJson(a[k], b[k]));
}

// "...T04:57:36.000000Z" (the API) and "...T04:57:36Z" (canonical) are the same instant.
const sameTime = (a, b) => typeof a === "string" && typeof b === "string" &&
  a.replace(/\.000000Z$/, "Z") === b.replace(/\.000000Z$/, "Z");

// Fields of `event` (as the API shows it) that differ from the canonical bytes.
export function differences(event, canonical) {
  const keys = Object.keys(canonical).sort();
  if (keys.join() !== CANONICAL_KEYS.join()) return ["(canonical fields)"];
  return CANONICAL_KEYS.filter((k) => (k.endsWith("_at") ? !sameTime(event[k], canonical[k])
    : !sameJson(event[k], canonical[k])));
}

export function tenantToken(tenant) {
  return tenant.replaceAll(".", "~");
}

function check(name, ok, detail) {
  return { name, result: ok === null ? "skipped" : ok ? "pass" : "fail", detail };
}

// Every check of `event` against `proof` (GET /v1/audit/events/{id}/proof) with `pinned`
// (a parsed verifier key, or null). Returns {status, failed, checks, checkpoint}, where
// status is "verified" only when every check passed against a pinned key.
export async function verifyEvent(event, proof, pinned) {
  const checks = [];
  let canonical = null;
  try {
    canonical = JSON.parse(proof.canonical);
  } catch {
    canonical = null;
  }
  const diffs = canonical ? differences(event, canonical) : ["(unreadable)"];
  const sameEvent = proof.event_id === event.id && proof.tenant_id === event.tenant_id &&
    proof.seq === event.seq && proof.leaf_index === event.seq - 1;
  checks.push(check("event matches proof", diffs.length === 0 && sameEvent,
    diffs.length ? `differs in ${diffs.join(", ")}` : sameEvent ? "the event shown is the one hashed"
      : "the proof is for another event or position"));

  let chainHash = null;
  try {
    chainHash = await sha256(fromHex(proof.prev_hash), utf8.encode(proof.canonical));
    const ok = toHex(chainHash) === event.hash;
    checks.push(check("chain link", ok, ok ? "SHA-256(prev_hash || canonical) is the stored hash"
      : "SHA-256(prev_hash || canonical) is not the event's hash: the stored event changed"));
  } catch (err) {
    checks.push(check("chain link", false, `unreadable: ${err.message}`));
  }

  let cp = null;
  let note = null;
  try {
    note = parseNote(proof.checkpoint.note);
    cp = parseCheckpoint(note.text);
  } catch (err) {
    checks.push(check("checkpoint", false, `unreadable: ${err.message}`));
  }
  if (cp) {
    const origin = pinned ? `${pinned.name}/${tenantToken(event.tenant_id)}` : null;
    const sizeOk = cp.size === BigInt(proof.checkpoint.size);
    const originOk = origin === null ? cp.origin.endsWith(`/${tenantToken(event.tenant_id)}`)
      : cp.origin === origin;
    checks.push(check("checkpoint", sizeOk && originOk, !originOk
      ? `origin ${cp.origin} is not this tenant's log` : !sizeOk ? "size differs from the note's"
        : `${cp.origin}, ${cp.size} events${cp.extensions.length ? `, ${cp.extensions.join(", ")}` : ""}`));
    let root = null;
    if (chainHash) {
      try {
        const path = proof.proof.map(fromBase64);
        root = await rootFromPath(await leafHash(chainHash), BigInt(proof.leaf_index), cp.size, path);
      } catch {
        root = null;
      }
    }
    const ok = root !== null && equalBytes(root, cp.root);
    checks.push(check("audit path", ok, ok ? `leaf ${proof.leaf_index} leads to the signed root`
      : "the audit path does not lead to the checkpoint's root"));
  }

  if (!pinned) {
    checks.push(check("signature", null, "not checked: no pinned key"));
  } else if (note) {
    const mine = note.signatures.filter((s) => s.name === pinned.name &&
      equalBytes(s.keyHash, pinned.keyHash));
    let ok = false;
    for (const s of mine) ok = ok || await verifySignature(pinned, note.text, s.sig);
    const others = note.signatures.map((s) => `${s.name}+${toHex(s.keyHash)}`).join(", ");
    checks.push(check("signature", ok, ok ? `Ed25519 signature by the pinned key ${pinned.id}`
      : mine.length ? `the signature by ${pinned.id} does not verify`
        : `not signed by the pinned key ${pinned.id} (signed by ${others || "no key"})`));
  }

  const failed = checks.filter((c) => c.result === "fail").map((c) => c.name);
  const status = failed.length ? "failed" : pinned ? "verified" : "unverified";
  return { status, failed, checks, checkpoint: cp };
}
