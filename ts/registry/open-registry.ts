/**
 * The registries a `--registry URL` names besides etcd (whose fleet settings fleet-mode.ts
 * passes): one factory, so each scheme plugs in here and nothing else changes:
 *
 * | URL                                                   | registry                              |
 * |-------------------------------------------------------|---------------------------------------|
 * | `memory:` (the default)                               | MemoryRegistry                        |
 * | `k8s://<namespace>/<service>[,<service>...]`          | KubernetesRegistry (ready pods of the |
 * |   `?port=<name>` (the Service port, default http)     | Services' EndpointSlices), API server |
 * |   `&pods=<label selector>` (pods watched)             | from KubeClient.fromEnvironment()     |
 */
import { InvalidConfigError } from "../errors.js";
import { KubernetesRegistry } from "../kubernetes/kubernetes-registry.js";
import type { Registry } from "../router/types.js";
import { MemoryRegistry } from "./memory-registry.js";

export interface OpenedRegistry {
  registry: Registry;
  /** Stops watches and connections (a no-op for memory). */
  close(): Promise<void>;
}

export interface OpenRegistryOptions {
  log?: (message: string) => void;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** Opens (and for watched registries, starts: the first list is done) the registry of `url`. */
export async function openRegistry(url: string, options: OpenRegistryOptions = {}): Promise<OpenedRegistry> {
  const scheme = /^([a-z0-9+.-]+):/i.exec(url)?.[1]?.toLowerCase();
  switch (scheme) {
    case "memory":
      return { registry: new MemoryRegistry(), close: async () => {} };
    case "k8s": {
      const { namespace, services, port, pods } = parseK8sRegistryUrl(url);
      const registry = new KubernetesRegistry({
        namespace,
        service: services,
        ...(port ? { portName: port } : {}),
        ...(pods ? { podSelector: pods } : {}),
        ...(options.log ? { log: options.log } : {}),
      });
      await registry.start();
      return { registry, close: () => registry.close() };
    }
    default:
      throw new InvalidConfigError(`registry URL ${JSON.stringify(url)}: unknown scheme (expected memory: or k8s://<namespace>/<service>)`);
  }
}

export function parseK8sRegistryUrl(url: string): { namespace: string; services: string[]; port?: string; pods?: string } {
  const bad = (why: string): never => {
    throw new InvalidConfigError(`registry URL ${JSON.stringify(url)}: ${why} (expected k8s://<namespace>/<service>[,<service>...])`);
  };
  if (!URL.canParse(url)) bad("not a URL");
  const u = new URL(url);
  const namespace = u.hostname;
  if (!DNS_LABEL.test(namespace)) bad(`namespace ${JSON.stringify(namespace)} is not a DNS label`);
  const services = decodeURIComponent(u.pathname.replace(/^\/+|\/+$/g, "")).split(",").filter((s) => s.length > 0);
  if (services.length === 0) bad("no service");
  for (const s of services) if (!DNS_LABEL.test(s)) bad(`service ${JSON.stringify(s)} is not a DNS label`);
  for (const key of u.searchParams.keys()) if (key !== "port" && key !== "pods") bad(`unknown parameter ${JSON.stringify(key)} (port, pods)`);
  const port = u.searchParams.get("port") ?? undefined;
  const pods = u.searchParams.get("pods") ?? undefined;
  return { namespace, services, ...(port ? { port } : {}), ...(pods ? { pods } : {}) };
}
