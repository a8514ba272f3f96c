/**
 * The Kubernetes registry's counters on the gateway's /metrics, read at scrape time: pods left out
 * (and why), lists and watches of each collection, 410 Gone relists, failed watches.
 */
import { Counter, Gauge, type Registry as MetricsRegistry } from "prom-client";
import type { KubernetesRegistry } from "./kubernetes-registry.js";

export function registerKubernetesRegistryMetrics(metrics: MetricsRegistry, registry: KubernetesRegistry): void {
  const registers = [metrics];
  new Counter({
    name: "kvroute_registry_records_invalid_total",
    help: "Ready endpoints left out of the registry, by reason (bad_annotations: the pod's kvroute.dev/* annotations make no valid record; no_port: the slice has no HTTP port)",
    labelNames: ["reason"],
    registers,
    collect() {
      this.reset();
      const s = registry.stats();
      this.inc({ reason: "bad_annotations" }, s.invalidPods);
      this.inc({ reason: "no_port" }, s.noPort);
    },
  });
  new Gauge({
    name: "kvroute_registry_workers",
    help: "Workers in the registry (ready pods of the Services)",
    registers,
    collect() {
      this.set(registry.stats().workers);
    },
  });
  const perResource = (name: string, help: string, field: "lists" | "watches" | "gone" | "errors") =>
    new Counter({
      name,
      help,
      labelNames: ["resource"],
      registers,
      collect() {
        this.reset();
        const s = registry.stats();
        this.inc({ resource: "endpointslices" }, s.slices[field]);
        this.inc({ resource: "pods" }, s.pods[field]);
      },
    });
  perResource("kvroute_kubernetes_lists_total", "Lists of a watched collection (the first one, then one per 410 Gone)", "lists");
  perResource("kvroute_kubernetes_watches_total", "Watches opened (the server ends each after its timeout; it resumes from the last resourceVersion)", "watches");
  perResource("kvroute_kubernetes_watch_gone_total", "410 Gone answers (the resourceVersion was compacted): each relists", "gone");
  perResource("kvroute_kubernetes_watch_errors_total", "Failed lists or watches (connection, 5xx, malformed events), retried with backoff", "errors");
}
