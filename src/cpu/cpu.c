/* PLACEHOLDER, being replaced by the fast CPU backend: forwards to cpu-ref. */
#include "../dmoe-impl.h"
const dmoe_backend_iface dmoe__backend_cpu = {
    "cpu", 1, DMOE_MAX_EXPERTS, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
};
