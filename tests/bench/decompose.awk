# tests/bench/decompose.awk — where a server's CPU time goes, from perf.
#
#	perf script -F comm,ip,sym,dso -i perf.data |
#	    awk -v comm=echo-epoll -f tests/bench/decompose.awk
#
# prints "SAMPLES NET_FRACTION OWN_FRACTION" over the samples of the tasks
# whose command is COMM (its first 15 characters, as the kernel keeps it;
# io_uring's iou-* workers count as the server's too).
#
# Each sample is classified by the frame nearest its leaf that says what
# the CPU was doing, walking from the leaf towards the caller:
#
#   net  the kernel's network path, the floor every model pays for the
#        same bytes: TCP, IP, the loopback device and softirq, sk_buffs and
#        their slabs, checksums, the copies to and from user memory, the
#        socket layer (sock_*, __sys_sendto ...);
#   own  what the model itself costs: system call entry and exit,
#        select/poll/epoll/io_uring, signals, wake-ups, scheduling and
#        context switches, fork/clone and threads, user space.
#
# Frames that say nothing by themselves (spinlocks, RCU, the paravirtual
# irq-enable where a deferred timer sample lands) are skipped: their
# caller decides.  A sample with no recognised frame is "own".  tcp_poll
# and sock_poll are own: they are the poll machinery's calls into the
# socket, made for the model's readiness check, not to move bytes.
function classify(sym, dso) {
	if (dso !~ /kernel/)
		return "own"
	if (sym ~ /^(tcp_poll|sock_poll)$/)
		return "own"
	if (sym ~ /^(ep_|do_epoll|__x64_sys_epoll|io_|__io_|do_poll|do_sys_poll|__x64_sys_(p?poll|p?select[0-9]*|rt_sig|fcntl|accept|clone)|do_select|core_sys_select|poll_|__pollwait|pollwake|try_to_wake_up|__wake_up|wake_up|autoremove_wake|default_wake|woken_wake|ttwu|schedule|__schedule|finish_task_switch|pick_next|__pick|update_curr|update_load|enqueue_|dequeue_|check_preempt|psi_|__switch_to|switch_mm|context_switch|do_signal|send_sig|__send_signal|kill_fasync|__kill_fasync|get_signal|dequeue_signal|do_sigtimedwait|signalfd|do_fcntl|copy_process|kernel_clone|do_exit|do_wait|futex|__futex|entry_SYSCALL|do_syscall_64|syscall_exit|syscall_enter|exit_to_user|__x64_sys_(read|write)$|ksys_(read|write)|vfs_(read|write)|fdget|__fdget|fget|__fget|fput|__fput)/)
		return "own"
	if (sym ~ /^(tcp|__tcp|ip_|__ip_|ipv4|inet|__inet|sk_|__sk_|sock_|__sock|skb|__skb|kfree_skb|__kfree_skb|consume_skb|napi|__napi|netif|__netif|net_rx|__net|dev_|__dev_|loopback|validate_xmit|nf_|__nf_|neigh|__neigh|csum|__csum|copy_|_copy_|__copy_|rep_movs|memcpy|__memcpy|memmove|__memmove|release_sock|lock_sock|__release_sock|security_sock|bpf_lsm_sock|security_socket|__alloc_skb|kmalloc_reserve|page_frag|__build_skb|kmem_cache|kmalloc|__kmalloc|kfree|__slab|slab_|___slab|dst_|fib_|rt_|cubic|bictcp|process_backlog|do_softirq|__do_softirq|handle_softirqs|__local_bh_enable|raw_v4|__sys_(send|recv)|____sys_|___sys_|__x64_sys_(send|recv)|move_addr|import_)/)
		return "net"
	return ""
}
function flush() {
	if (!insample)
		return
	if (class == "")
		class = "own"
	n[class]++
	total++
	insample = 0
}
/^[^\t]/ && NF {
	# a sample's header line (frames start with a tab): its command
	flush()
	c = $1
	insample = (substr(c, 1, 15) == substr(comm, 1, 15) || c ~ /^iou-/)
	class = ""
	next
}
/^\t/ && insample && NF >= 2 && class == "" {
	sym = $2; sub(/\+0x[0-9a-f]+$/, "", sym)
	dso = $NF
	class = classify(sym, dso)
}
END {
	flush()
	if (total == 0) { print 0, "", ""; exit }
	printf "%d %.4f %.4f\n", total, n["net"] / total, n["own"] / total
}
