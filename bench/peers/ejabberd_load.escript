%% Bulk-writes mnesia records (passwd, roster) into a running ejabberd node over Erlang
%% distribution: escript ejabberd_load.escript NODE COOKIE FILE.terms
%% FILE holds one record per line as written by gen_users.py ejabberd.
main([Node0, Cookie, File]) ->
    Me = list_to_atom("prov" ++ os:getpid() ++ "@localhost"),
    {ok, _} = net_kernel:start([Me, shortnames]),
    erlang:set_cookie(node(), list_to_atom(Cookie)),
    Node = list_to_atom(Node0),
    pong = net_adm:ping(Node),
    {ok, Terms} = file:consult(File),
    load(Node, Terms, 0),
    io:format("loaded ~p records~n", [length(Terms)]);
main(_) ->
    io:format("usage: ejabberd_load.escript NODE COOKIE FILE~n"),
    halt(2).

load(_Node, [], _) -> ok;
load(Node, Terms, N) ->
    {Batch, Rest} = lists:split(min(2000, length(Terms)), Terms),
    ok = rpc:call(Node, lists, foreach, [fun mnesia:dirty_write/1, Batch], 60000),
    load(Node, Rest, N + length(Batch)).
