package watch

import (
	"context"
	"log/slog"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Watch signals on the returned channel whenever a link, address or route
// changes in ns. Signals coalesce (the channel holds one): the receiver is
// expected to take a fresh Snapshot, so no event is ever assumed or lost.
// A subscription error closes netlink's channels; Watch then subscribes
// again and signals, so the receiver resyncs everything.
func Watch(ctx context.Context, ns netns.NsHandle, log *slog.Logger) <-chan struct{} {
	tick := make(chan struct{}, 1)
	signal := func() {
		select {
		case tick <- struct{}{}:
		default:
		}
	}
	go func() {
		backoff := 10 * time.Millisecond
		for ctx.Err() == nil {
			err := subscribe(ctx, ns, signal)
			if ctx.Err() != nil {
				return
			}
			log.Warn("netlink subscription lost, resubscribing", "err", err)
			signal()
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			if backoff < time.Second {
				backoff *= 2
			}
		}
	}()
	return tick
}

// subscribe runs one subscription until it fails or ctx ends.
func subscribe(ctx context.Context, ns netns.NsHandle, signal func()) error {
	done := make(chan struct{})
	defer close(done)
	errc := make(chan error, 3)
	onErr := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	var nsp *netns.NsHandle
	if ns != netns.None() {
		nsp = &ns
	}
	links := make(chan netlink.LinkUpdate, 64)
	addrs := make(chan netlink.AddrUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 256)
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{Namespace: nsp, ErrorCallback: onErr}); err != nil {
		return err
	}
	if err := netlink.AddrSubscribeWithOptions(addrs, done, netlink.AddrSubscribeOptions{Namespace: nsp, ErrorCallback: onErr}); err != nil {
		return err
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{Namespace: nsp, ErrorCallback: onErr}); err != nil {
		return err
	}
	// Something may have changed between the caller's last snapshot and
	// the subscription: signal once now.
	signal()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return err
		case _, ok := <-links:
			if !ok {
				return errClosed
			}
			signal()
		case _, ok := <-addrs:
			if !ok {
				return errClosed
			}
			signal()
		case _, ok := <-routes:
			if !ok {
				return errClosed
			}
			signal()
		}
	}
}

type closedError struct{}

func (closedError) Error() string { return "netlink subscription closed" }

var errClosed error = closedError{}
