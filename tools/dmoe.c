/* PLACEHOLDER for the dmoe CLI. */
#include <stdio.h>
#include "dmoe.h"
int main(void) { printf("dmoe %s\n", dmoe_version_string()); return 0; }
