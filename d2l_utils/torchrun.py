"""``torchrun`` for one machine, with every socket it listens on bound to the loopback address.

    python -m d2l_utils.torchrun --nproc-per-node 2 train.py --epochs 1

takes torchrun's options and the script with its arguments, and starts torchrun's own
``main`` with a single node and the loopback address as its master. The difference is
one socket: torchrun's store (the key-value server through which the processes find
each other) listens on every network interface of the machine, whatever master address
it is given; here it is handed a socket already bound to 127.0.0.1, on a free port. The
processes' own connections stay on the loopback interface too (``GLOO_SOCKET_IFNAME``
and ``NCCL_SOCKET_IFNAME`` name it, unless they are set already). Several machines
need real addresses: start those runs with ``torchrun`` itself.
"""

from __future__ import annotations

import os
import socket
import sys

__all__ = ["LOOPBACK", "loopback_interface", "main"]

LOOPBACK = "127.0.0.1"
# torchrun's options that this launcher sets itself (both spellings torchrun accepts).
_OWN_OPTIONS = ("nnodes", "master_addr", "master_port", "rdzv_endpoint", "rdzv_backend", "standalone",
                "node_rank", "rdzv_id", "rdzv_conf")


def loopback_interface() -> str | None:
    """The name of the loopback network interface (``lo`` on Linux, ``lo0`` on macOS), if found."""
    try:
        names = {name for _, name in socket.if_nameindex()}
    except OSError:
        return None
    return next((name for name in ("lo", "lo0") if name in names), None)


def _refuse_own_options(argv: list[str]) -> None:
    for arg in argv:
        if arg.endswith(".py") and not arg.startswith("-"):
            break  # the script; what follows are its own arguments
        if not arg.startswith("--"):
            continue  # an option's value
        name = arg[2:].split("=", 1)[0].replace("-", "_")
        if name in _OWN_OPTIONS:
            raise SystemExit(f"d2l_utils.torchrun runs one machine on the loopback address and sets "
                             f"--{name.replace('_', '-')} itself; for several machines start the run "
                             f"with torchrun (see the chapter on data parallelism)")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _refuse_own_options(argv)
    from torch.distributed import run
    from torch.distributed.elastic.rendezvous import static_tcp_rendezvous

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))  # port 0: the system picks a free one, so two runs never collide
    listener.listen(socket.SOMAXCONN)
    port = listener.getsockname()[1]
    make_store = static_tcp_rendezvous.TCPStore

    def loopback_store(host, store_port, world_size=None, is_master=False, *args, **kwargs):
        # The store's server listens on the socket bound above instead of on every interface,
        # and closes it when done: the socket object lets go of its descriptor.
        if is_master and (host, store_port) == (LOOPBACK, port) and listener.fileno() >= 0:
            kwargs["master_listen_fd"] = listener.detach()
        return make_store(host, store_port, world_size, is_master, *args, **kwargs)

    static_tcp_rendezvous.TCPStore = loopback_store
    interface = loopback_interface()
    if interface is not None:
        for name in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME"):
            os.environ.setdefault(name, interface)
    try:
        run.main(["--nnodes", "1", "--rdzv-backend", "static", "--master-addr", LOOPBACK,
                  "--master-port", str(port), *argv])
    finally:
        static_tcp_rendezvous.TCPStore = make_store
        listener.close()


if __name__ == "__main__":
    main()
