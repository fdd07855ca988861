/* hack/node/pause.c: the pod sandbox ("pause") image's only program, built static by
 * hack/node.sh. It holds the pod's namespaces: sleeps, reaps any child that is
 * re-parented to it, and exits on TERM or INT, which is all containerd asks of it. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction term = {.sa_handler = stop}, child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  if (sigaction(SIGTERM, &term, NULL) || sigaction(SIGINT, &term, NULL) || sigaction(SIGCHLD, &child, NULL))
    return 1;
  for (;;) pause();
}
