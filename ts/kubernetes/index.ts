export { KubeApiError, KubeClient, SERVICE_ACCOUNT_DIR, type KubeClientOptions, type KubeObject } from "./kube-client.js";
export { ListWatch, type ListWatchOptions, type ListWatchStats } from "./list-watch.js";
export {
  KubernetesRegistry,
  RegistryReadOnlyError,
  type EndpointSlice,
  type KubernetesRegistryOptions,
  type KubernetesRegistryStats,
  type Pod,
} from "./kubernetes-registry.js";
export {
  KubernetesConnector,
  metricsInFlight,
  ScaleError,
  type KubernetesConnectorOptions,
  type PlannerConnector,
  type ScaleOptions,
  type ScaleResult,
} from "./kubernetes-connector.js";
export { KubernetesWorkerConnector, parseK8sConnectorUrl } from "./kubernetes-worker-connector.js";
export { buildManifests, connectorRbac, manifestsYaml, registryRbac, type ManifestOptions } from "./manifests.js";
export { ANNOTATIONS, POD_DELETION_COST, recordFromPod, workerAnnotations, type WorkerAnnotationInput } from "./pod-annotations.js";
