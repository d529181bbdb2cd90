/**
 * A real Audit Log Service for the tests: `auditlog run` on a temporary state dir (its own
 * embedded PostgreSQL and NATS) and free ports, the admin token set, stopped afterwards.
 *
 * The command is `$AUDITLOG_BIN` (default: the repository's `.venv/bin/auditlog`).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "..", "..", "..", "..");

export interface Service {
  baseUrl: string;
  adminToken: string;
  stop(): Promise<void>;
  /** A new tenant key with read and write scope (through the admin API). */
  tenantKey(tenantId: string): Promise<string>;
}

async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

async function waitReady(url: string, proc: ChildProcess, output: () => string): Promise<void> {
  const deadline = Date.now() + 180_000;
  while (Date.now() < deadline) {
    if (proc.exitCode !== null) {
      throw new Error(`auditlog run exited with ${proc.exitCode}:\n${output()}`);
    }
    try {
      const resp = await fetch(`${url}/readyz`);
      if (resp.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`${url}/readyz did not answer 200 in 180 s:\n${output()}`);
}

export async function startService(): Promise<Service> {
  const state = await mkdtemp(path.join(tmpdir(), "auditlog-ts-"));
  const [http, grpc, metrics] = [await freePort(), await freePort(), await freePort()];
  const adminToken = `ts-client-admin-${Date.now()}-0123456789`;
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith("AUDIT_") && v !== undefined) env[k] = v;
  }
  Object.assign(env, {
    AUDIT_STATE_DIR: state,
    AUDIT_HTTP_PORT: String(http),
    AUDIT_GRPC_PORT: String(grpc),
    AUDIT_METRICS_PORT: String(metrics),
    AUDIT_ADMIN_TOKEN: adminToken,
    AUDIT_LOG_LEVEL: "WARNING",
  });
  const bin = process.env.AUDITLOG_BIN ?? path.join(repo, ".venv", "bin", "auditlog");
  const proc = spawn(bin, ["run"], { env, stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const keep = (chunk: Buffer) => {
    log = (log + chunk.toString()).slice(-20_000);
  };
  proc.stdout?.on("data", keep);
  proc.stderr?.on("data", keep);
  const baseUrl = `http://127.0.0.1:${http}`;
  try {
    await waitReady(baseUrl, proc, () => log);
  } catch (err) {
    proc.kill("SIGKILL");
    throw err;
  }
  return {
    baseUrl,
    adminToken,
    async tenantKey(tenantId: string): Promise<string> {
      const resp = await fetch(`${baseUrl}/v1/admin/keys`, {
        method: "POST",
        headers: { Authorization: `Bearer ${adminToken}`, "Content-Type": "application/json" },
        body: JSON.stringify({ tenant_id: tenantId, scopes: ["read", "write"] }),
      });
      const body = (await resp.json()) as { token: string };
      if (resp.status !== 201) throw new Error(`creating a key: ${JSON.stringify(body)}`);
      return body.token;
    },
    async stop(): Promise<void> {
      if (proc.exitCode === null) {
        const exited = new Promise((r) => proc.once("exit", r));
        proc.kill("SIGTERM");
        const timer = setTimeout(() => proc.kill("SIGKILL"), 60_000);
        await exited;
        clearTimeout(timer);
      }
      await rm(state, { recursive: true, force: true });
    },
  };
}
