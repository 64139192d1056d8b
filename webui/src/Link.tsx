import type { ReactNode } from "react";
import { formatRoute, isPlainClick, type Navigate, type Route } from "./route";

interface Props {
  to: Route;
  navigate: Navigate;
  children: ReactNode;
  className?: string;
  role?: string;
  "aria-current"?: "page" | undefined;
  "aria-selected"?: boolean;
  onNavigated?: () => void;
}

/** A real link (copyable, opens in a new tab on a modified click) that a plain click follows
 * inside the page. */
export function Link({ to, navigate, children, onNavigated, ...rest }: Props) {
  return (
    <a
      {...rest}
      href={formatRoute(to)}
      onClick={(event) => {
        if (!isPlainClick(event)) return;
        event.preventDefault();
        navigate(to);
        onNavigated?.();
      }}
    >
      {children}
    </a>
  );
}
