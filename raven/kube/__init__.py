"""Kubernetes access shared by both modes (I/O only; no Raven policy lives here).

- `client`: `new_api_client(kubeconfig)` (kubeconfig file or in-cluster) and `KubeClient`, plain-JSON
  verbs (get/list/create/replace/merge_patch/delete/watch) with client-side timeouts, `ApiError`;
- `informer`: the one `Informer` (list + watch + cache + handlers + `synced` readiness);
- `typed`: `TypedInformer`, the typed cache over an Informer (API JSON parsed once per resourceVersion into
  the project's objects; nothing above raven/kube/ sees JSON), and `TypedClient` (verbs with typed results);
- `leader`: `LeaderElector` on a coordination.k8s.io/v1 Lease (releases on cancel);
- `events`: `EventRecorder` (core/v1 Events, non-blocking, repeats counted);
- `backoff`: `Backoff` (exponential, jittered delays);
- `workqueue`: `WorkQueue` keyed by name, coalescing bursts, one worker per key at a time, delayed retries;
- `k8s`: `load()`, kubernetes_asyncio's configuration, auth and transport imported without its generated API
  classes and models (run first thing by raven/__init__.py).
"""
